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
-- (one GETRANGE of the next 9 or more; if they have all left, a few probes and a halving of the
-- rest by single-entry reads: O(log n) reads); a denial's wait, the entry whose expiry frees enough, is
-- found by the same search from the head (usually the head itself, whose cost the trailer
-- holds). On the server's clock the key expires when its newest entry leaves the window, rounded
-- up to the second (so one EXPIREAT per key and second at most); on a client's clock, PEXPIRE of
-- the period at each admission.
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
-- Entries read at once after the head when it has left the window, from an index that is a
-- multiple of LOG_ALIGN: at least LOG_CHUNK - LOG_ALIGN + 1 entries after the head.
local LOG_CHUNK = 12
local LOG_ALIGN = 4
-- Dead entries kept before the live part is moved to the start of the string.
local LOG_SLACK = 8
-- Struct formats of n entries, by n.
local log_formats = {}
-- The last expiry second set, and it as text.
local log_exp, log_exp_text = 0, '0'

-- Byte offsets as text, by offset, at most 256: Redis formats a number argument of redis.call
-- as a double (sprintf %.17g, some 2,000 instructions), while a string is passed as it is; and
-- logs of the same length (keys of one batch, admitted alike) write at the same offsets.
local log_texts, log_text_count = {}, 0

local function log_text(n)
  local text = log_texts[n]
  if not text then
    text = format('%d', n)
    if log_text_count >= 256 then
      log_texts, log_text_count = {}, 0
    end
    log_texts[n] = text
    log_text_count = log_text_count + 1
  end
  return text
end

local function log_format(n)
  local f = log_formats[n]
  if not f then
    f = '<' .. srep('dI4', n)
    log_formats[n] = f
  end
  return f
end

-- The log's record during a call, by key: an array of
--   [1] m, [2] h, [3] the head's tick, [4] base, [5] the head's total, [6] the newest tick,
--   [7] the newest total, [8] the expiry second, [9] pend, [10] tdirty, [11] fresh, [12] gone,
--   [13] period, [14] limit:
-- what the string holds as the checks before saw it, m = 0 when the window holds nothing. Only
-- the newest entry and the trailer may be ahead of the string: `pend` when the newest entry
-- (and the trailer) is to be written, `tdirty` when only the trailer is (the head moved),
-- `fresh` when the string is to be replaced by the newest entry alone, `gone` when every entry
-- has left the window (the key is deleted). `flush_logs` writes each once at the end of the
-- call, so checks of one hot key in one call read the string once and write it once. The
-- searches never read the newest entry from the string (it is their known end), so they read
-- only what the string holds. An array, not named fields, and records reused from call to call
-- (`log_pool`): creating a table of a dozen fields costs Redis some 3,000 instructions.
local logs = {}
-- The keys given a record in this call, in order (`flush_logs` writes them in this order).
local log_keys, log_count = {}, 0
-- Records of calls before, to reuse, at most 256.
local log_pool, log_spare = {}, 0
-- The record of a log checked once in a call (`log_once`).
local LOG_ONE = { 0, 0, 0, 0, 0, 0, 0, 0, false, false, false, false, 0, 0 }

-- The entries i .. j (i <= j) of the string at `key`, as { t_i, total_i, t_i+1, ... }: unpacked
-- 200 at a time, within what Lua's C stack holds (and so `log_formats` holds few formats).
local function log_read(key, i, j)
  local bytes = call('GETRANGE', key, log_text(i * 12), log_text(j * 12 + 11))
  local n = j - i + 1
  if n <= 200 then
    return { sunpack(log_format(n), bytes) }
  end
  local e, ne, pos = {}, 0, 1
  while n > 0 do
    local k = n
    if k > 200 then
      k = 200
    end
    local part = { sunpack(log_format(k), bytes, pos) }
    for q = 1, 2 * k do
      e[ne + q] = part[q]
    end
    ne, pos, n = ne + 2 * k, part[2 * k + 1], n - k
  end
  return e
end

-- Entry i of the log `l` at `key`: its tick and running total.
local function log_entry(key, l, i)
  if i == l[1] - 1 then
    return l[6], l[7]
  elseif i == l[2] then
    return l[3], l[5]
  end
  local bytes = call('GETRANGE', key, log_text(i * 12), log_text(i * 12 + 11))
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
      error(NOT_A_STATE, 0)
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

-- The bytes at the end of the string at `key` (`range`, a negative start, as text, or `tail`
-- when they were read already), converting an earlier version's list first; '' when there is
-- no log; or nil and why it cannot be read (a key of another type), without raising. (A string's length tells it from an error reply,
-- a table, whose length is 0: type() is a C call, hundreds of instructions.)
local function log_tail(key, range, tail)
  if not tail then
    tail = rpcall('GETRANGE', key, range, '-1')
  end
  if #tail == 0 and tail ~= '' then
    local t = call('TYPE', key)
    if t.ok ~= 'list' then
      return nil, tostring(tail.err or tail)
    end
    local done, err = pcall(log_migrate, key)
    if not done then
      return nil, tostring(err)
    end
    tail = call('GETRANGE', key, range, '-1')
  end
  return tail
end

-- Reads the log at `key` into the record `l`: l, or nil and why it cannot be read.
local function log_fill(key, l)
  -- A log's 40 bytes read here, log_tail called only for what is not (a call costs Redis
  -- hundreds of instructions).
  local tail = rpcall('GETRANGE', key, '-40', '-1')
  local n = #tail
  if n ~= 40 then
    local err
    tail, err = log_tail(key, '-40', tail)
    if not tail then
      return nil, err
    end
    n = #tail
  end
  l[9], l[10], l[11], l[12] = false, false, false, false
  if n == 0 then
    l[1], l[2], l[8] = 0, 0, 0
    return l
  elseif n ~= 40 then
    return nil, NOT_A_STATE
  end
  l[6], l[7], l[1], l[2], l[3], l[4], l[5], l[8] = sunpack(LOG_TAIL, tail)
  if l[2] >= l[1] or not (l[3] <= l[6]) then
    return nil, NOT_A_STATE
  end
  return l
end

-- The record of the log at `key` in this call, read if it is not there yet; or nil and why it
-- cannot be read, without raising.
local function log_state(key)
  local l = logs[key]
  if l then
    return l
  end
  if log_spare > 0 then
    l = log_pool[log_spare]
    log_spare = log_spare - 1
  else
    l = { 0, 0, 0, 0, 0, 0, 0, 0, false, false, false, false, 0, 0 }
  end
  local err
  l, err = log_fill(key, l)
  if l then
    logs[key] = l
    log_count = log_count + 1
    log_keys[log_count] = key
  end
  return l, err
end

-- Moves the head of `l` to its first entry after `cutoff`, the head being at or before it and
-- the newest entry after it.
local function log_advance(key, l, cutoff)
  local h, m = l[2], l[1]
  local j, t, total
  -- The running total of the entry before `lo`.
  local before = l[5]
  -- Entries mostly leave a few at a time: the ones after the head, in one read of LOG_CHUNK
  -- entries from the multiple of LOG_ALIGN at or before the first of them (so that the
  -- offsets' text, kept by log_text, serves the next heads too: formatting it costs more than
  -- reading the few entries before it).
  local lo = h + 1
  local b = lo - lo % LOG_ALIGN
  local last = b + LOG_CHUNK - 1
  if last > m - 2 then
    last = m - 2
  end
  if lo <= last then
    local bytes = call('GETRANGE', key, log_text(b * 12), log_text(last * 12 + 11))
    -- Mostly the head alone has left: its successor, unpacked alone (a table of them all, with
    -- its allocation and collection, costs Redis some 5,000 instructions more).
    local t1, total1 = sunpack('<dI4', bytes, (lo - b) * 12 + 1)
    if t1 > cutoff then
      j, t, total = lo, t1, total1
    else
      local e = { sunpack(log_format(last - b + 1), bytes) }
      before = total1
      for i = lo - b + 2, last - b + 1 do
        local ti = e[2 * i - 1]
        if ti > cutoff then
          j, t, total = b + i - 1, ti, e[2 * i]
          break
        end
        before = e[2 * i]
      end
      if not j then
        lo = last + 1
      end
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
  l[2], l[3], l[5], l[4], l[10] = j, t, total, before, true
end

local function log_frees(arg, _, total)
  return (total - arg[1]) % LOG_MOD >= arg[2]
end

-- A check of the log `l` at `key`: the twin of sliding_window_log.rs's `apply`, returning what
-- an algorithm returns.
local function log_check(key, l, now, p, cost, commit)
  local period, limit = p.period, p.limit
  local m = l[1]
  local used = 0
  if m > 0 then
    -- A clock that goes back is treated as standing still at the newest entry.
    local last_t = l[6]
    if now < last_t then
      now = last_t
    end
    local cutoff = now - period
    if last_t <= cutoff then
      -- Every entry has left the window: the key goes (a clock that steps back later must
      -- find it gone, as memory's state is).
      m = 0
      l[1], l[12] = 0, true
    else
      if l[3] <= cutoff then
        -- Drop the entries older than one period (tidying never changes a later decision).
        log_advance(key, l, cutoff)
      end
      used = (l[7] - l[4]) % LOG_MOD
    end
  end
  local allowed = used + cost <= limit
  local retry = -1
  if not allowed and cost <= limit then
    -- Wait until the oldest entries that together free enough have left the window.
    local to_free = used + cost - limit
    local at = l[3]
    if (l[5] - l[4]) % LOG_MOD < to_free then
      local i = log_search(key, l, l[2] + 1, m - 1, log_frees, { l[4], to_free })
      at = log_entry(key, l, i)
    end
    retry = at + period - now
  end
  if allowed and commit then
    if m > 0 and l[6] == now then
      local total = (l[7] + cost) % LOG_MOD
      l[7] = total
      if l[2] == m - 1 then
        l[5] = total
      end
    elseif m > 0 then
      -- (A call has one instant: an entry it appended is the newest, so it is never followed
      -- by another before it is written.)
      m = m + 1
      l[1], l[6], l[7] = m, now, (l[7] + cost) % LOG_MOD
    else
      m = 1
      l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[11] = 1, 0, now, 0, cost, now, cost, true
    end
    l[9], l[13], l[14] = true, period, limit
    used = used + cost
  end
  local reset = 0
  if m > 0 then
    reset = l[6] + period - now
  end
  local remaining = 0
  if used < limit then
    remaining = limit - used
  end
  return allowed, limit, remaining, reset, retry
end

-- `r` checks in a row of the log `l` at `key` at one instant, as r calls of `log_check` would
-- decide them: appends each check's three values to vs[m + 1 ..] and returns the new m. The
-- first is log_check's; a check that changes nothing (a denial, a peek) is answered alike by
-- the ones after it; and admissions after an admission, which only grow the newest entry, are
-- decided with its running total in a local (`used` is then limit - remaining, and the reset,
-- the newest entry's, stays). A hot key's repeats cost a few Lua instructions each.
local function log_run(key, l, now, p, cost, commit, r, vs, m)
  local allowed, limit, remaining, reset, retry = log_check(key, l, now, p, cost, commit)
  if allowed then
    retry = -1
  elseif retry < 0 then
    retry = -2
  end
  vs[m + 1], vs[m + 2], vs[m + 3] = remaining, reset, retry
  m = m + 3
  local i = 2
  if allowed and commit and r > 1 then
    local used, total = limit - remaining, l[7]
    while i <= r do
      used = used + cost
      if used > limit then
        break
      end
      total = (total + cost) % LOG_MOD
      remaining = limit - used
      vs[m + 1], vs[m + 2], vs[m + 3] = remaining, reset, -1
      m = m + 3
      i = i + 1
    end
    l[7] = total
    if l[2] == l[1] - 1 then
      l[5] = total
    end
    if i <= r then
      -- Denied: what the check after the last admission frees, found as log_check finds it.
      local _
      allowed, _, remaining, reset, retry = log_check(key, l, now, p, cost, commit)
      if allowed then
        retry = -1
      elseif retry < 0 then
        retry = -2
      end
      vs[m + 1], vs[m + 2], vs[m + 3] = remaining, reset, retry
      m = m + 3
      i = i + 1
    end
  end
  for _ = i, r do
    vs[m + 1], vs[m + 2], vs[m + 3] = remaining, reset, retry
    m = m + 3
  end
  return m
end

-- The algorithm as the checks of several limits call it (decide.lua's `algorithms`): raises if
-- the log cannot be read.
local function sliding_window_log(key, now, p, cost, commit)
  local l, err = log_state(key)
  if not l then
    error(err, 0)
  end
  return log_check(key, l, now, p, cost, commit)
end

-- The expiry second of `l`'s key when it is set on the server's clock (false to keep the one
-- the trailer records), or 0 on the client's clock: a key outlives its newest entry's window,
-- rounded up to the second, so that writes within the second keep it (setting an expiry costs
-- Redis thousands of instructions).
local function log_expiry(l)
  if not server_now then
    return 0
  end
  local need = l[6] + l[13]
  if l[8] * 1000000 >= need and not l[11] then
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
  local h, m = l[2], l[1]
  local text = ''
  local n = m - h
  if m - 2 >= h then
    text = call('GETRANGE', key, h * 12, (m - 1) * 12 - 1)
  end
  if squeeze then
    local parts, np = {}, 0
    local before, pos = l[4], 1
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
          if t ~= prev_t then
            np = np + 1
          end
          parts[np] = pack('<dI4', t, total)
          prev_t = t
        end
        before = total
      end
      i = i + k
    end
    if l[6] == prev_t then
      np = np - 1
    end
    text = concat(parts, '', 1, np)
    n = np + 1
  end
  local kept = exp or l[8]
  local first_t, head_total = l[6], l[7]
  if n > 1 then
    first_t, head_total = sunpack('<dI4', text)
  end
  text = text .. pack(LOG_TAIL, l[6], l[7], n, 0, first_t, l[4], head_total, kept)
  if not exp then
    call('SET', key, text, 'KEEPTTL')
  elseif exp == 0 then
    call('SET', key, text, 'PX', ttl_ms(l[13]))
  else
    call('SET', key, text, 'EXAT', log_exp_text)
  end
  l[1], l[2], l[3], l[5], l[8] = n, 0, first_t, head_total, kept
end

-- Writes what `l` holds ahead of the string at `key`.
local function write_log(key, l)
  if l[9] then
    -- log_expiry's answer, called only when it may set one.
    local exp = 0
    if server_now then
      exp = false
      if l[11] or l[8] * 1000000 < l[6] + l[13] then
        exp = log_expiry(l)
      end
    end
    local m, h = l[1], l[2]
    if l[11] then
      local text = pack(LOG_TAIL, l[6], l[7], 1, 0, l[3], l[4], l[5], exp)
      if exp == 0 then
        call('SET', key, text, 'PX', ttl_ms(l[13]))
      else
        call('SET', key, text, 'EXAT', log_exp_text)
      end
      l[8] = exp
    elseif m - h > 2 * l[14] then
      log_compact(key, l, exp, true)
    elseif h >= LOG_SLACK and h > m - h then
      log_compact(key, l, exp, false)
    else
      local at = (m - 1) * 12
      call('SETRANGE', key, log_texts[at] or log_text(at),
        pack(LOG_TAIL, l[6], l[7], m, h, l[3], l[4], l[5], exp or l[8]))
      if exp == 0 then
        call('PEXPIRE', key, ttl_ms(l[13]))
      elseif exp then
        call('EXPIREAT', key, log_exp_text)
      end
      if exp then
        l[8] = exp
      end
    end
  elseif l[12] then
    call('DEL', key)
  elseif l[10] and l[1] > 0 then
    call('SETRANGE', key, log_text(l[1] * 12),
      pack(LOG_TRAILER, l[1], l[2], l[3], l[4], l[5], l[8]))
  end
  l[9], l[10], l[11], l[12] = false, false, false, false
end

-- Writes every log of the call, and keeps their records for the calls after.
local function flush_logs()
  for i = 1, log_count do
    local key = log_keys[i]
    local l = logs[key]
    -- (A key listed twice, given a new record by a refund, is written once.)
    if l then
      if l[9] or l[10] or l[12] then
        write_log(key, l)
      end
      logs[key] = nil
      if log_spare < 256 then
        log_spare = log_spare + 1
        log_pool[log_spare] = l
      end
    end
    log_keys[i] = nil
  end
  log_count = 0
end

-- One check of the log at `key` that no record of the call holds: decided with the record
-- LOG_ONE, kept from call to call, and written at once, so that a call of one check of one log
-- (the common call) and many keys' one check each cost no record of their own, nor a turn of
-- `flush_logs` (a later check of the key in the call reads the string anew). Returns the
-- check's three values (as decide.lua's records hold them), or nil and why the log cannot be
-- read.
local function log_once(key, now, p, cost, commit)
  local l, err = log_fill(key, LOG_ONE)
  if not l then
    return nil, err
  end
  local allowed, _, remaining, reset, retry = log_check(key, l, now, p, cost, commit)
  if l[9] or l[10] or l[12] then
    write_log(key, l)
  end
  if allowed then
    retry = -1
  elseif retry < 0 then
    retry = -2
  end
  return remaining, reset, retry
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
    if l[9] or l[10] or l[12] then
      write_log(key, l)
    end
    logs[key] = nil
  end
  local s, err = log_tail(key, '-220')
  if not s then
    error(err, 0)
  end
  local n = #s
  if n == 0 then
    return
  end
  local m, h, first_t, base, head_total, exp
  if n >= 40 and (n - 28) % 12 == 0 then
    m, h, first_t, base, head_total, exp = sunpack(LOG_TRAILER, s, n - 27)
  end
  if not m or h >= m then
    error(NOT_A_STATE, 0)
  end
  -- The last k entries are in `s`: m - k .. m - 1.
  local k = (n - 28) / 12
  local e = { sunpack(log_format(k), s) }
  local last_t, last_total = e[2 * k - 1], e[2 * k]
  l = { m, h, first_t, base, head_total, last_t, last_total, exp, false, false, false, false,
    p.period, p.limit }
  logs[key] = l
  log_count = log_count + 1
  log_keys[log_count] = key
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
  -- Entries f .. m - 1 become `dropped` copies of the entry before f (or dead room), then
  -- those kept.
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
      l[1] = 0
      return
    end
    start = f + dropped
    l[2], l[3], l[5] = start, kept[1], kept[2]
  end
  for i = 1, nk, 2 do
    np = np + 1
    parts[np] = pack('<dI4', kept[i], kept[i + 1])
  end
  if nk > 0 then
    l[6], l[7] = kept[nk - 1], kept[nk]
  else
    l[6], l[7] = e[1], e[2]
  end
  np = np + 1
  parts[np] = pack(LOG_TRAILER, m, l[2], l[3], base, l[5], exp)
  call('SETRANGE', key, start * 12, concat(parts, '', 1, np))
end
