-- Sliding window log: the twin of algorithm/sliding_window_log.rs.
--
-- State: one string of fixed-size binary records, then a trailer:
--
--   entry i (0-based, 12 bytes, at byte 12 i): its tick (a little-endian double, exact below
--     2^53) and the running total of the costs logged up to it, modulo 2^32 ('<dI4');
--   the trailer (28 bytes, at byte 12 m): m, the number of entries; h, the index of the head,
--     the oldest entry not yet known to have left the window (those before it are dead room);
--     the head's tick, the running total before the head ('base'), the head's running total;
--     and the second at which the key expires, set on the server's clock, or 0 ('<I4I4dI4I4I4').
--
-- The cost of the entries from i to j is total_j - total_(i-1) (mod 2^32): what is in the window
-- is the newest total less the base. A check reads the newest entry and the trailer, the last 40
-- bytes, with one GETRANGE whose arguments are constant strings (Lua formats a number argument
-- of redis.call with sprintf, some 2,000 instructions of Redis each, and Redis spends some 11
-- instructions per byte read into Lua: reads are kept short). An admission writes the new or
-- grown newest entry and the trailer with one SETRANGE (appending overwrites the old trailer).
-- When the head has left the window, the first live entry is found from the entries after it
-- (one GETRANGE of the next few, then a galloping search of single-entry reads if they have all
-- left: O(log k) reads for k expired entries); a denial's wait, the entry whose expiry frees
-- enough, is found the same way, from the head (usually the head itself).
--
-- Memory: entries in the window each hold a cost of at least 1, so there are at most `limit` of
-- them, but for a refund's zero-cost copies (see the refund). The dead room before the head is
-- dropped (one GETRANGE of the live entries and a SET) when an admission finds it larger than
-- the live part and at least LOG_SLACK entries, and the live part is rewritten without zero-cost
-- copies once it holds more than twice `limit` entries: a key holds at most about 4 × limit
-- entries of 12 bytes (2 × limit without refunds), and strings are limited to 512 MB by Redis,
-- so a log's limit should stay below 10 million.
--
-- An earlier version kept the log as a list of "tick:cost:total" entries: such a key is
-- converted to this layout, entries and expiry, when a check first reads it.
local LOG_MOD = 4294967296
-- The newest entry and the trailer.
local LOG_TAIL = '<dI4I4I4dI4I4I4'
local LOG_TRAILER = '<I4I4dI4I4I4'
-- Entries read at once after the head when it has left the window.
local LOG_CHUNK = 8
-- Dead entries kept before the live part is moved to the start of the string.
local LOG_SLACK = 8
-- Struct formats of n entries, by n.
local log_formats = {}
-- The last expiry second set, and it as text.
local log_exp, log_exp_text = 0, '0'

local function log_format(n)
  local f = log_formats[n]
  if not f then
    f = '<' .. srep('dI4', n)
    log_formats[n] = f
  end
  return f
end

-- The log's record during a call, by key: { m, h, first_t, base, head_total, last_t,
-- last_total, exp, pend, tdirty, fresh, gone, period, limit }: what the string holds as the checks
-- before saw it, m = 0 when the window holds nothing. Only the newest entry and the trailer may
-- be ahead of the string: `pend` when the newest entry (and the trailer) is to be written,
-- `tdirty` when only the trailer is (the head moved), `fresh` when the string is to be replaced
-- by the newest entry alone, `gone` when every entry has left the window (the key is deleted). `flush_logs` writes each once at the end of the call, so checks of
-- one hot key in one call read the string once and write it once. The searches never read the
-- newest entry from the string (it is their known end), so they read only what the string holds.
local logs = {}

-- The entries i .. j (i <= j) of the string at `key`, as { t_i, total_i, t_i+1, ... }.
local function log_read(key, i, j)
  local bytes = call('GETRANGE', key, i * 12, j * 12 + 11)
  return { sunpack(log_format(j - i + 1), bytes) }
end

-- Entry i of the log `l` at `key`: its tick and running total.
local function log_entry(key, l, i)
  if i == l.m - 1 then
    return l.last_t, l.last_total
  elseif i == l.h then
    return l.first_t, l.head_total
  end
  local bytes = call('GETRANGE', key, i * 12, i * 12 + 11)
  local t, total = sunpack('<dI4', bytes)
  return t, total
end

-- The first index from `lo` to `hi` whose entry passes `test(arg, t, total)`, which fails along
-- the log and then passes; the entry at `hi` is known to pass. Answers are mostly near `lo`
-- (the few entries that left since the last check, the oldest that frees enough): it probes
-- lo, lo + 2, lo + 6 and lo + 14, then halves what is left, O(log n) reads.
local function log_search(key, l, lo, hi, test, arg)
  local step = 1
  while step <= 8 do
    local probe = lo + step - 1
    if probe >= hi then
      break
    end
    if test(arg, log_entry(key, l, probe)) then
      hi = probe
      break
    end
    lo = probe + 1
    step = step * 2
  end
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if test(arg, log_entry(key, l, mid)) then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return lo
end

local function log_after(cutoff, t)
  return t > cutoff
end

-- Converts the list an earlier version kept at `key` ("tick:cost:total" entries, oldest first)
-- into a string of this layout, keeping its expiry.
local function log_migrate(key)
  local items = call('LRANGE', key, '0', '-1')
  local ttl = call('PTTL', key)
  if #items == 0 then
    return
  end
  local parts = {}
  local first_t, first_c, first_total
  local t, total
  for i = 1, #items do
    local a, c, b = match(items[i], '^(%d+):(%d+):(%d+)$')
    if not a then
      error('rate-limit: the value at this key is not a state of this limit', 0)
    end
    t, total = tonumber(a), tonumber(b)
    if i == 1 then
      first_t, first_c, first_total = t, tonumber(c), total
    end
    parts[i] = pack('<dI4', t, total)
  end
  parts[#parts] = pack(LOG_TAIL, t, total, #items, 0, first_t,
    (first_total - first_c) % LOG_MOD, first_total, 0)
  local text = concat(parts)
  if ttl > 0 then
    call('SET', key, text, 'PX', ttl)
  else
    call('SET', key, text)
  end
end

-- The bytes at the end of the string at `key` (`range`, a negative start, as text), migrating
-- an earlier version's list first; '' when there is no log. Raises if the key holds another type.
local function log_tail(key, range)
  local tail = rpcall('GETRANGE', key, range, '-1')
  if type(tail) == 'table' then
    local t = call('TYPE', key)
    if t.ok ~= 'list' and t ~= 'list' then
      error(tostring(tail.err or tail), 0)
    end
    log_migrate(key)
    tail = call('GETRANGE', key, range, '-1')
  end
  return tail
end

local function read_log(key)
  local tail = log_tail(key, '-40')
  local n = #tail
  if n == 0 then
    return { m = 0, h = 0, pend = false, tdirty = false, fresh = false, exp = 0 }
  end
  local last_t, last_total, m, h, first_t, base, head_total, exp
  if n == 40 then
    last_t, last_total, m, h, first_t, base, head_total, exp = sunpack(LOG_TAIL, tail)
  end
  if n ~= 40 or h >= m then
    error('rate-limit: the value at this key is not a state of this limit', 0)
  end
  return {
    m = m, h = h, first_t = first_t, base = base, head_total = head_total, last_t = last_t,
    last_total = last_total, exp = exp, pend = false, tdirty = false, fresh = false,
  }
end

-- Moves the head of `l` to its first entry after `cutoff`, the head being at or before it and
-- the newest entry after it.
local function log_advance(key, l, cutoff)
  local h, m = l.h, l.m
  local j, t, total
  -- The running total of the entry before `lo`.
  local before = l.head_total
  -- Entries mostly leave a few at a time: the next few after the head, in one read.
  local lo = h + 1
  local last = h + LOG_CHUNK
  if last > m - 2 then
    last = m - 2
  end
  if lo <= last then
    local e = log_read(key, lo, last)
    for i = 1, last - lo + 1 do
      local ti = e[2 * i - 1]
      if ti > cutoff then
        j, t, total = lo + i - 1, ti, e[2 * i]
        break
      end
      before = e[2 * i]
    end
    if not j then
      lo = last + 1
    end
  end
  if not j then
    j = log_search(key, l, lo, m - 1, log_after, cutoff)
    t, total = log_entry(key, l, j)
    if j > lo then
      local _
      _, before = log_entry(key, l, j - 1)
    end
  end
  l.h, l.first_t, l.head_total, l.base, l.tdirty = j, t, total, before, true
end

local function log_frees(arg, _, total)
  return (total - arg[1]) % LOG_MOD >= arg[2]
end

local function sliding_window_log(key, now, p, cost, commit)
  local l = logs[key]
  if not l then
    l = read_log(key)
    logs[key] = l
  end
  local period, limit = p.period, p.limit
  local used = 0
  if l.m > 0 then
    -- A clock that goes back is treated as standing still at the newest entry.
    local last_t = l.last_t
    if now < last_t then
      now = last_t
    end
    local cutoff = now - period
    if last_t <= cutoff then
      -- Every entry has left the window: the key goes (a clock that steps back later must
      -- find it gone, as memory's state is).
      l.m, l.gone = 0, true
    else
      if l.first_t <= cutoff then
        -- Drop the entries older than one period (tidying never changes a later decision).
        log_advance(key, l, cutoff)
      end
      used = (l.last_total - l.base) % LOG_MOD
    end
  end
  local allowed = used + cost <= limit
  local retry = -1
  if not allowed and cost <= limit then
    -- Wait until the oldest entries that together free enough have left the window.
    local to_free = used + cost - limit
    local at = l.first_t
    if (l.head_total - l.base) % LOG_MOD < to_free then
      local i = log_search(key, l, l.h + 1, l.m - 1, log_frees, { l.base, to_free })
      at = log_entry(key, l, i)
    end
    retry = at + period - now
  end
  if allowed and commit then
    local m = l.m
    if m > 0 and l.last_t == now then
      local total = (l.last_total + cost) % LOG_MOD
      l.last_total = total
      if l.h == m - 1 then
        l.head_total = total
      end
    elseif m > 0 then
      l.m, l.last_t, l.last_total = m + 1, now, (l.last_total + cost) % LOG_MOD
    else
      l.m, l.h, l.first_t, l.base, l.head_total, l.last_t, l.last_total, l.fresh =
        1, 0, now, 0, cost, now, cost, true
    end
    l.pend, l.period, l.limit = true, period, limit
    used = used + cost
  end
  local reset = 0
  if l.m > 0 then
    reset = l.last_t + period - now
  end
  local remaining = 0
  if used < limit then
    remaining = limit - used
  end
  return allowed, limit, remaining, reset, retry
end

-- The expiry second of `l`'s key when it is set on the server's clock (false to keep the one
-- the trailer records), or 0 on the client's clock: a key outlives its newest entry's window,
-- rounded up to the second, so that writes within the second keep it (setting an expiry costs
-- Redis thousands of instructions).
local function log_expiry(l)
  if not server_now then
    return 0
  end
  local need = l.last_t + l.period
  if l.exp * 1000000 >= need and not l.fresh then
    return false
  end
  local s = need / 1000000
  local exp = s - s % 1
  if exp < s then
    exp = exp + 1
  end
  if exp ~= log_exp then
    log_exp, log_exp_text = exp, format('%d', exp)
  end
  return exp
end

-- Rewrites the live entries of `l` from the start of the string (those from h to the newest,
-- the newest from `l`), dropping zero-cost entries and joining entries of one tick when
-- `squeeze`; `exp` as log_expiry gives it.
local function log_compact(key, l, exp, squeeze)
  local h, m = l.h, l.m
  local text = ''
  local n = m - h
  if m - 2 >= h then
    text = call('GETRANGE', key, h * 12, (m - 1) * 12 - 1)
  end
  if squeeze then
    local parts, np = {}, 0
    local before, pos = l.base, 1
    local prev_t = -1
    local i = h
    while i <= m - 2 do
      local k = m - 1 - i
      if k > 200 then
        k = 200
      end
      local e = { sunpack(log_format(k), text, pos) }
      pos = e[2 * k + 1]
      for q = 1, k do
        local t, total = e[2 * q - 1], e[2 * q]
        if total ~= before then
          if t == prev_t then
            parts[np] = pack('<dI4', t, total)
          else
            np = np + 1
            parts[np] = pack('<dI4', t, total)
          end
          prev_t = t
        end
        before = total
      end
      i = i + k
    end
    if l.last_t == prev_t then
      np = np - 1
    end
    text = concat(parts, '', 1, np)
    n = np + 1
  end
  local kept = exp or l.exp
  local first_t, head_total = l.first_t, l.head_total
  if n > 1 then
    first_t, head_total = sunpack('<dI4', text)
  else
    first_t, head_total = l.last_t, l.last_total
  end
  text = text .. pack(LOG_TAIL, l.last_t, l.last_total, n, 0, first_t, l.base, head_total, kept)
  if not exp then
    call('SET', key, text, 'KEEPTTL')
  elseif exp == 0 then
    call('SET', key, text, 'PX', ttl_ms(l.period))
  else
    call('SET', key, text, 'EXAT', log_exp_text)
  end
  l.m, l.h, l.first_t, l.head_total, l.exp = n, 0, first_t, head_total, kept
end

-- Writes what `l` holds ahead of the string at `key`.
local function write_log(key, l)
  if l.pend then
    local exp = log_expiry(l)
    local m, h = l.m, l.h
    if l.fresh then
      local text = pack(LOG_TAIL, l.last_t, l.last_total, 1, 0, l.first_t, l.base,
        l.head_total, exp)
      if exp == 0 then
        call('SET', key, text, 'PX', ttl_ms(l.period))
      else
        call('SET', key, text, 'EXAT', log_exp_text)
      end
      l.exp = exp
    elseif m - h > 2 * l.limit then
      log_compact(key, l, exp, true)
    elseif h >= LOG_SLACK and h > m - h then
      log_compact(key, l, exp, false)
    else
      call('SETRANGE', key, (m - 1) * 12, pack(LOG_TAIL, l.last_t, l.last_total, m, h,
        l.first_t, l.base, l.head_total, exp or l.exp))
      if exp == 0 then
        call('PEXPIRE', key, ttl_ms(l.period))
      elseif exp then
        call('EXPIREAT', key, log_exp_text)
      end
      if exp then
        l.exp = exp
      end
    end
  elseif l.gone then
    call('DEL', key)
  elseif l.tdirty and l.m > 0 then
    call('SETRANGE', key, l.m * 12, pack(LOG_TRAILER, l.m, l.h, l.first_t, l.base,
      l.head_total, l.exp))
  end
  l.pend, l.tdirty, l.fresh, l.gone = false, false, false, false
end

local function flush_logs()
  for key, l in pairs(logs) do
    if l.pend or l.tdirty or l.gone then
      write_log(key, l)
    end
  end
end

local function log_at_or_after(at, t)
  return t >= at
end

-- Refund: the twin of sliding_window_log.rs's `refund`: up to `cost` units off the oldest entries
-- logged at or after `at`, oldest first, and the running totals after them lowered to match;
-- nothing once `at` has left the window. Works on the string, once the call's pending writes to
-- it are made. The entries from the first at or after `at` (f) to the newest are rewritten in
-- place, the kept ones moved to the end: when f is the head, the room they leave becomes dead
-- room before the head; otherwise it is filled with zero-cost copies of the entry before f
-- (same tick, same total), which no decision tells from that one entry, and which a
-- compaction drops. One read of the last 16 entries finds f for a prompt refund; an older
-- charge time is found in O(log n) single-entry reads, and the k entries from it are read once:
-- O(k) bytes, not the whole log.
local function sliding_window_log_refund(key, now, p, cost, at)
  local l = logs[key]
  if l then
    if l.pend or l.tdirty or l.gone then
      write_log(key, l)
    end
    logs[key] = nil
  end
  local s = log_tail(key, '-220')
  local n = #s
  if n == 0 then
    return
  end
  local m, h, first_t, base, head_total, exp
  if n >= 40 and (n - 28) % 12 == 0 then
    m, h, first_t, base, head_total, exp = sunpack(LOG_TRAILER, s, n - 27)
  end
  if not m or h >= m then
    error('rate-limit: the value at this key is not a state of this limit', 0)
  end
  -- The last k entries are in `s`: m - k .. m - 1.
  local k = (n - 28) / 12
  local e = { sunpack(log_format(k), s) }
  local last_t, last_total = e[2 * k - 1], e[2 * k]
  l = {
    m = m, h = h, first_t = first_t, base = base, head_total = head_total, last_t = last_t,
    last_total = last_total, exp = exp, pend = false, tdirty = false, fresh = false,
  }
  logs[key] = l
  -- A clock behind the newest entry stands at it.
  if now < last_t then
    now = last_t
  end
  if at + p.period <= now or last_t < at then
    return
  end
  -- f, and the entries from f - 1 (if f is not the head) to the newest: { t, total, ... }.
  local f
  local lo = m - k
  if lo < h then
    lo = h
  end
  if e[2 * (lo - (m - k)) + 1] < at then
    -- In the entries read.
    f = lo + 1
    while e[2 * (f - (m - k)) + 1] < at do
      f = f + 1
    end
  elseif lo == h then
    f = h
  else
    f = log_search(key, l, h, lo, log_at_or_after, at)
  end
  local from = f
  if f > h then
    from = f - 1
  end
  if from < m - k then
    e = log_read(key, from, m - 1)
  else
    local skip = 2 * (from - (m - k))
    for i = 1, 2 * (m - from) do
      e[i] = e[i + skip]
    end
  end
  -- e[1], e[2] is entry `from`.
  local before = base
  local first = 1
  if f > h then
    before = e[2]
    first = 2
  end
  local left, given = cost, 0
  local kept, nk = {}, 0
  for i = first, m - from do
    local t, total = e[2 * i - 1], e[2 * i]
    local c = (total - before) % LOG_MOD
    before = total
    local take = c
    if left < take then
      take = left
    end
    left, given = left - take, given + take
    if take < c then
      nk = nk + 1
      kept[nk] = t
      nk = nk + 1
      kept[nk] = (total - given) % LOG_MOD
    end
  end
  -- Entries f .. m - 1 become `dropped` copies of the entry before f (or dead room), then those kept.
  local dropped = m - f - nk / 2
  local parts, np = {}, 0
  local start = f
  if f > h then
    local copy = pack('<dI4', e[1], e[2])
    for i = 1, dropped do
      parts[i] = copy
    end
    np = dropped
  else
    if nk == 0 then
      call('DEL', key)
      l.m = 0
      return
    end
    start = f + dropped
    l.h, l.first_t, l.head_total = start, kept[1], kept[2]
  end
  for i = 1, nk, 2 do
    np = np + 1
    parts[np] = pack('<dI4', kept[i], kept[i + 1])
  end
  if nk > 0 then
    l.last_t, l.last_total = kept[nk - 1], kept[nk]
  else
    l.last_t, l.last_total = e[1], e[2]
  end
  np = np + 1
  parts[np] = pack(LOG_TRAILER, m, l.h, l.first_t, base, l.head_total, exp)
  call('SETRANGE', key, start * 12, concat(parts, '', 1, np))
end
