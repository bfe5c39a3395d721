-- Sliding window log: the twin of algorithm/sliding_window_log.rs.
--
-- State: a list, oldest first, of "tick:cost:total" entries, where total is the running total
-- of the costs pushed since the list was created, modulo 2^32 (so that it stays exact in a
-- double however long the list lives). Admissions at the same tick share an entry, and every
-- entry is in the window when one is pushed, so the list holds at most `limit` entries. The
-- cost of the entries from i to j is `total_j - total_i + cost_i` (mod 2^32), and the cost in
-- the window is read from its two ends.
--
-- Work per call and key: LLEN, the two ends, and one write (see `logs`). Dropping k expired
-- entries finds the first live one in O(log k) LINDEX calls and drops them with one LTRIM; a
-- denial finds the entry whose expiry frees enough in O(log i) LINDEX calls, i its position. LINDEX walks the
-- list from its nearer end in nodes of some hundred entries, so no call reads the whole list.
local TOTAL_MOD = 4294967296
-- The list indexes the script passes as constants are written as strings: Lua 5.1 formats a
-- number argument of redis.call with sprintf, some 2,000 instructions of Redis each.

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

-- The logs read during the call, by key: { n, first_t, first_c, first_total, last_t, last_c,
-- last_total, write, ttl }, what the list holds as the checks before saw it (n = 0: empty).
-- Only the newest entry may be ahead of the list: `write` is 'RPUSH' when it is still to be
-- pushed, 'LSET' when it is to be rewritten, false when the list holds it; `flush_logs` writes
-- it once at the end of the call, with the expiry (`ttl` ticks). So checks of one hot key in one
-- call read the list's ends once and write once. The searches (`first_passing`) never read the
-- newest entry (it is their known end), so they read only entries the list holds.
local logs = {}

local function read_log(key)
  local n = call('LLEN', key)
  if n == 0 then
    return { 0 }
  end
  local l = { n }
  l[5], l[6], l[7] = log_entry(call('LINDEX', key, '-1'))
  if n == 1 then
    l[2], l[3], l[4] = l[5], l[6], l[7]
  else
    l[2], l[3], l[4] = log_entry(call('LINDEX', key, '0'))
  end
  l[8] = false
  return l
end

local function flush_logs()
  for key, l in pairs(logs) do
    if l[8] then
      local entry = format('%d:%d:%d', l[5], l[6], l[7])
      if l[8] == 'RPUSH' then
        call('RPUSH', key, entry)
      else
        call('LSET', key, '-1', entry)
      end
      call('PEXPIRE', key, ttl_ms(l[9]))
    end
  end
end

local function sliding_window_log(key, now, p, cost, commit)
  local l = logs[key]
  if not l then
    l = read_log(key)
    logs[key] = l
  end
  local n = l[1]
  local first_t, first_c, first_total = l[2], l[3], l[4]
  local last_t, last_c, last_total = l[5], l[6], l[7]
  local live = false
  if n > 0 then
    -- A clock that goes back is treated as standing still at the newest entry.
    now = max(now, last_t)
    if last_t + p.period <= now then
      -- Every entry has left the window.
      call('DEL', key)
      n = 0
      l[1], l[8] = 0, false
    else
      live = true
      if first_t + p.period <= now then
        -- Drop the entries older than one period (tidying never changes a later decision).
        -- The newest entry is live, so it stays: the search never reads it.
        local keep = first_passing(key, 1, n - 1, 1, now - p.period + 1)
        -- Also right when the list does not hold the newest entry yet: the indexes below it
        -- are the same.
        call('LTRIM', key, keep, '-1')
        n = n - keep
        if n == 1 then
          first_t, first_c, first_total = last_t, last_c, last_total
        else
          first_t, first_c, first_total = log_entry(call('LINDEX', key, '0'))
        end
        l[1], l[2], l[3], l[4] = n, first_t, first_c, first_total
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
      if i == n - 1 then
        at = last_t
      else
        at = log_entry(call('LINDEX', key, i))
      end
    end
    retry = at + p.period - now
  end
  local newest = nil
  if live then
    newest = last_t
  end
  if allowed and commit then
    if live and last_t == now then
      l[6], l[7] = last_c + cost, (last_total + cost) % TOTAL_MOD
      l[8] = l[8] or 'LSET'
      if n == 1 then
        l[3], l[4] = l[6], l[7]
      end
    else
      local total = cost
      if live then
        total = (last_total + cost) % TOTAL_MOD
      end
      if l[8] == 'RPUSH' or l[8] == 'LSET' then
        -- The entry ahead of the list is written before a newer one follows it.
        local entry = format('%d:%d:%d', l[5], l[6], l[7])
        if l[8] == 'RPUSH' then
          call('RPUSH', key, entry)
        else
          call('LSET', key, '-1', entry)
        end
      end
      n = n + 1
      l[1], l[5], l[6], l[7], l[8] = n, now, cost, total, 'RPUSH'
      if n == 1 then
        l[2], l[3], l[4] = now, cost, total
      end
    end
    l[9] = p.period
    used = used + cost
    newest = now
  end
  local reset = 0
  if newest then
    reset = newest + p.period - now
  end
  return allowed, p.limit, p.limit - min(used, p.limit), reset, retry
end

-- Refund: the twin of sliding_window_log.rs's `refund`: up to `cost` units off the oldest entries
-- logged at or after `at`, oldest first, and the running totals after them lowered to match;
-- nothing once `at` has left the window. It works on the list itself, after writing the newest
-- entry this call holds ahead of the list (the caller's peek reads the list again): O(log n)
-- LINDEX calls find `at`, then one LRANGE, LTRIM and RPUSH rewrite the k entries from it on.
local function sliding_window_log_refund(key, now, p, cost, at)
  local l = logs[key]
  if l then
    if l[8] then
      local entry = format('%d:%d:%d', l[5], l[6], l[7])
      if l[8] == 'RPUSH' then
        call('RPUSH', key, entry)
      else
        call('LSET', key, '-1', entry)
      end
      call('PEXPIRE', key, ttl_ms(l[9]))
    end
    logs[key] = nil
  end
  local n = call('LLEN', key)
  if n == 0 then
    return
  end
  local last_t = log_entry(call('LINDEX', key, '-1'))
  -- A clock behind the newest entry stands at it.
  now = max(now, last_t)
  if at + p.period <= now or last_t < at then
    return
  end
  local first = first_passing(key, 0, n - 1, 1, at)
  local tail = call('LRANGE', key, first, '-1')
  local left, given = cost, 0
  local kept = {}
  local newest = nil
  for i = 1, #tail do
    local t, c, total = log_entry(tail[i])
    local take = min(c, left)
    left, given = left - take, given + take
    if take < c then
      kept[#kept + 1] = format('%d:%d:%d', t, c - take, (total - given) % TOTAL_MOD)
      newest = t
    end
  end
  if first == 0 then
    call('DEL', key)
  else
    call('LTRIM', key, '0', first - 1)
  end
  -- In slices, to stay within what unpack may put on Lua's stack.
  for i = 1, #kept, 512 do
    call('RPUSH', key, unpack(kept, i, min(i + 511, #kept)))
  end
  if first == 0 and newest then
    call('PEXPIRE', key, ttl_ms(newest + p.period - now))
  end
end
