-- The entry point: decides a batch of checks, one after the other in the order given, all at
-- one instant, exactly as separate calls at that instant would.
--
-- KEYS: the state keys of every check, in order: one per limit. The keys of one check share a
-- hash tag; a key may appear in several checks.
-- ARGV: now in ticks ('' to read the server's TIME, once for the whole call), then for each
-- entry: its number of limits n, cost, commit ('1' or '0'), repeat count r, then six integers
-- per limit: algorithm code, limit, burst, period in ticks, and the emission interval in
-- nanoseconds as whole microseconds and the nanoseconds left. An entry stands for r identical
-- checks in a row, decided one after the other; its keys are sent once.
-- Returns one binary string, the records of every check in order: per limit, 'D' and five
-- little-endian doubles (allowed 1/0, capacity, remaining, reset after, retry after or -1); or,
-- if that check failed, 'E', the length of its error message as a double, and the message.
-- One string, because Redis converts each element of a reply table at a cost of its own and the
-- client parses one string far faster than as many integers. Every value is an integer of at
-- most 2^53, so its double is exact.
-- A check that fails (a key of the wrong type, ...) leaves the text states as they were before
-- it, and the other checks of the call are decided as if it had not been sent.
-- Each is called as algorithm(key, now, p, cost, commit) and returns five values (not a table,
-- which would cost an allocation per check; only a check of several limits keeps each limit's
-- answer in a table until all are decided): allowed, capacity, remaining, reset after, and
-- retry after or -1.
local algorithms = {
  token_bucket, leaky_bucket, fixed_window, sliding_window_log, sliding_window, gcra,
}

-- The answers: per check in order, one record per limit, or one error record.
local replies = {}
local pack = struct.pack
-- A limit's record: 'D' (68), then its five values as little-endian doubles.
local RECORD = '<Bddddd'

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end

-- The limit whose six integers start after ARGV[b], as its algorithm and parameters, or nil and
-- a message for an unknown algorithm. Checks of
-- one call mostly repeat the same limits: the last limit read at each position in a check is
-- kept, and reused when its six arguments are the same strings (Lua strings are interned, so
-- comparing them costs no more than comparing numbers).
local last_limits = {}
local function limit_at(i, b)
  local code, limit, burst, period, interval_us, interval_ns =
    ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  local last = last_limits[i]
  if last and last.code == code and last.limit == limit and last.burst == burst
    and last.period == period and last.interval_us == interval_us
    and last.interval_ns == interval_ns then
    return last.algorithm, last.p
  end
  local algorithm = algorithms[tonumber(code)]
  if not algorithm then
    return nil, 'rate-limit: unknown algorithm code ' .. tostring(code)
  end
  -- The interval (ih, il) and a full bucket, tau = burst * interval (th, tl), in nanoseconds.
  local p = {
    limit = tonumber(limit),
    burst = tonumber(burst),
    period = tonumber(period),
    ih = tonumber(interval_us),
    il = tonumber(interval_ns),
  }
  p.th, p.tl = ns_mul(p.burst, p.ih, p.il)
  last_limits[i] = {
    code = code, limit = limit, burst = burst, period = period, interval_us = interval_us,
    interval_ns = interval_ns, algorithm = algorithm, p = p,
  }
  return algorithm, p
end

-- The algorithms and parameters of the n limits whose integers start after ARGV[a], read once
-- for every check of an entry; or nil and a message.
local function entry_limits(a, n)
  local fns, ps = {}, {}
  for i = 1, n do
    local fn, p = limit_at(i, a + (i - 1) * 6)
    if not fn then
      return nil, p
    end
    fns[i], ps[i] = fn, p
  end
  return fns, ps
end

-- Sets record m + 1 to one limit's answer (68 is 'D').
local function push(m, r)
  replies[m + 1] = pack(RECORD, 68, r[1] and 1 or 0, r[2], r[3], r[4], r[5])
end

-- Sets record m + 1 to a check's error message (69 is 'E').
local function fail(m, message)
  replies[m + 1] = pack('<Bd', 69, #message) .. message
end

-- One check of several limits, whose keys are KEYS[k + 1 .. k + n]: appends its n records.
-- All or nothing: decide every limit without charging, then charge only if all allow. The
-- states it writes are journaled, so that a failure can undo them. A limit listed twice has
-- one key (the key names the limit): it is decided and charged once, and each of its places
-- gets that answer.
local function check_all(k, n, fns, ps, cost, commit)
  journal = {}
  local first = {}
  for i = 1, n do
    first[i] = i
    for j = 1, i - 1 do
      if KEYS[k + j] == KEYS[k + i] then
        first[i] = j
        break
      end
    end
  end
  local raws = {}
  local all = true
  for i = 1, n do
    if first[i] < i then
      raws[i] = raws[first[i]]
    else
      raws[i] = { fns[i](KEYS[k + i], now, ps[i], cost, false) }
    end
    all = all and raws[i][1]
  end
  if all and commit then
    for i = 1, n do
      if first[i] < i then
        raws[i] = raws[first[i]]
      else
        raws[i] = { fns[i](KEYS[k + i], now, ps[i], cost, true) }
      end
    end
  end
  local m = #replies
  for i = 1, n do
    push(m, raws[i])
    m = m + 1
  end
end

-- The message of an error raised by redis.call (a table { err = message } in some versions, the
-- message in others) or by error() (the message).
local function message(err)
  if type(err) == 'table' and err.err then
    err = err.err
  end
  return tostring(err)
end

local k, a = 0, 1
while a < #ARGV do
  local n = tonumber(ARGV[a + 1])
  local cost = tonumber(ARGV[a + 2])
  local commit = ARGV[a + 3] == '1'
  local repeats = tonumber(ARGV[a + 4])
  if n == 1 then
    -- One limit: its algorithm writes its state only once it has read and computed all, so a
    -- failure leaves nothing to undo.
    local fn, p = limit_at(1, a + 4)
    local key = KEYS[k + 1]
    for _ = 1, repeats do
      if not fn then
        fail(#replies, p)
      else
        -- The five values of the answer, or false and the error; packed here rather than
        -- through push, which would cost this, the hot path, a table or a call per check.
        local done, allowed, capacity, remaining, reset, retry = pcall(fn, key, now, p, cost, commit)
        if done then
          replies[#replies + 1] =
            pack(RECORD, 68, allowed and 1 or 0, capacity, remaining, reset, retry)
        else
          fail(#replies, message(allowed))
        end
      end
    end
  else
    local fns, ps = entry_limits(a + 4, n)
    for _ = 1, repeats do
      local m = #replies
      if not fns then
        fail(m, ps)
      else
        local done, err = pcall(check_all, k, n, fns, ps, cost, commit)
        if not done then
          -- Undo its states and drop its partial answer; its answer is the message.
          rollback_states()
          for i = #replies, m + 1, -1 do
            replies[i] = nil
          end
          fail(m, message(err))
        end
      end
      journal = nil
    end
  end
  k = k + n
  a = a + 4 + n * 6
end
flush_states()
return table.concat(replies)
