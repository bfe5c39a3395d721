-- Sliding window log: the twin of algorithm/sliding_window_log.rs.
--
-- State: a list, oldest first, of "tick:cost:total" entries, where total is the running total
-- of the costs pushed since the list was created, modulo 2^32 (so that it stays exact in a
-- double however long the list lives). Admissions at the same tick share an entry, and every
-- entry is in the window when one is pushed, so the list holds at most `limit` entries. The
-- cost of the entries from i to j is `total_j - total_i + cost_i` (mod 2^32), and the cost in
-- the window is read from its two ends.
--
-- Work per call: LLEN, the two ends, and the write. Dropping k expired entries finds the
-- first live one in O(log k) LINDEX calls and drops them with one LTRIM; a denial finds the
-- entry whose expiry frees enough in O(log i) LINDEX calls, i its position. LINDEX walks the
-- list from its nearer end in nodes of some hundred entries, so no call reads the whole list.
local TOTAL_MOD = 4294967296

local function log_entry(text)
  local t, c, total = match(text, '^(%d+):(%d+):(%d+)$')
  return tonumber(t), tonumber(c), tonumber(total)
end

-- The cost of the entries from `first` (its cost and total) to the one whose total is `total`.
local function log_cost(first_c, first_total, total)
  return (total - first_total) % TOTAL_MOD + first_c
end

-- Whether the entry at index i of the list at `key` passes the test of `first_passing`.
local function log_passes(key, i, field, bound, head_c, head_total)
  local t, _, total = log_entry(call('LINDEX', key, i))
  if field == 1 then
    return t >= bound
  end
  return log_cost(head_c, head_total, total) >= bound
end

-- The first index of the list at `key`, from `lo` on, whose entry passes a test that fails
-- along the list and then passes; the entry at `hi` is known to pass. The test: the entry's
-- tick is at least `bound` (`field` 1), or the cost from the list's head (whose cost and total
-- are `head_c`, `head_total`) through the entry is at least `bound` (`field` 3). Probes lo,
-- lo + 1, lo + 3, lo + 7, ..., then halves the last gap: O(log i) probes for an answer at i.
local function first_passing(key, lo, hi, field, bound, head_c, head_total)
  local step = 1
  local probe = lo
  while probe < hi and not log_passes(key, probe, field, bound, head_c, head_total) do
    lo = probe + 1
    probe = min(probe + step, hi)
    step = step * 2
  end
  hi = probe
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if log_passes(key, mid, field, bound, head_c, head_total) then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return lo
end

local function sliding_window_log(key, now, p, cost, commit)
  local n = call('LLEN', key)
  local last_t, last_c, last_total
  local first_t, first_c, first_total
  local live = false
  if n > 0 then
    last_t, last_c, last_total = log_entry(call('LINDEX', key, -1))
    -- A clock that goes back is treated as standing still at the newest entry.
    now = max(now, last_t)
    if last_t + p.period <= now then
      -- Every entry has left the window.
      call('DEL', key)
    else
      live = true
      first_t, first_c, first_total = log_entry(call('LINDEX', key, 0))
      if first_t + p.period <= now then
        -- Drop the entries older than one period (tidying never changes a later decision).
        local keep = first_passing(key, 1, n - 1, 1, now - p.period + 1)
        call('LTRIM', key, keep, -1)
        n = n - keep
        first_t, first_c, first_total = log_entry(call('LINDEX', key, 0))
      end
    end
  end
  local used = 0
  if live then
    used = log_cost(first_c, first_total, last_total)
  end
  local allowed = used + cost <= p.limit
  local retry = -1
  if not allowed and cost <= p.limit then
    -- Wait until the oldest entries that together free enough have left the window.
    local to_free = used + cost - p.limit
    local at = first_t
    if first_c < to_free then
      local i = first_passing(key, 1, n - 1, 3, to_free, first_c, first_total)
      at = log_entry(call('LINDEX', key, i))
    end
    retry = at + p.period - now
  end
  local newest = nil
  if live then
    newest = last_t
  end
  if allowed and commit then
    if live and last_t == now then
      call('LSET', key, -1,
        format('%d:%d:%d', now, last_c + cost, (last_total + cost) % TOTAL_MOD))
    else
      local total = cost
      if live then
        total = (last_total + cost) % TOTAL_MOD
      end
      call('RPUSH', key, format('%d:%d:%d', now, cost, total))
    end
    used = used + cost
    newest = now
    call('PEXPIRE', key, ttl_ms(p.period))
  end
  local reset = 0
  if newest then
    reset = newest + p.period - now
  end
  return allowed, p.limit, p.limit - min(used, p.limit), reset, retry
end
