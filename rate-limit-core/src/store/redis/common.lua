-- Shared helpers of the rate-limit script. Time is in integer ticks of one microsecond (the
-- server's TIME, or the client's clock). The bucket algorithms count their spans in nanoseconds,
-- as memory does, so that an emission interval that is not a whole microsecond (3/s, 10^7/s) is
-- not rounded: a span of nanoseconds is held as two integers, h microseconds and l nanoseconds
-- (0 <= l < 1000), since a count of nanoseconds since the epoch is beyond 2^53. Every value
-- stays below 2^53, where Lua numbers (doubles) are exact, and every division is floored, so
-- the arithmetic is the integer arithmetic of the Rust transitions. Answers are in ticks: a span
-- in nanoseconds is rounded up to the microsecond. A bucket whose interval is a whole number of
-- microseconds (most quotas) keeps every time whole and runs the same arithmetic in plain
-- integers, which costs Redis less.

-- A function library reads a global (math, string, tonumber, ...) through its environment's
-- metatable, at a cost of hundreds of instructions of Redis per read (callgrind): every global
-- the script uses is read once, into a local. Not when the library loads, since its code then
-- runs where none of them is defined, but at its first call (`bind_globals`, called by
-- `decide`).
local floor, ceil, max, min
local format, gmatch, match, concat
local tonumber, tostring, pcall, type, pairs, ipairs, unpack
local call, rpcall, pack, sunpack

local function bind_globals()
  floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
  format, gmatch, match, concat = string.format, string.gmatch, string.match, table.concat
  tonumber, tostring, pcall, type = _G.tonumber, _G.tostring, _G.pcall, _G.type
  pairs, ipairs, unpack = _G.pairs, _G.ipairs, _G.unpack
  call, rpcall, pack, sunpack = redis.call, redis.pcall, struct.pack, struct.unpack
end

-- a + b.
local function ns_add(ah, al, bh, bl)
  local l = al + bl
  if l >= 1000 then
    return ah + bh + 1, l - 1000
  end
  return ah + bh, l
end

-- a - b, for a >= b.
local function ns_sub(ah, al, bh, bl)
  local l = al - bl
  if l < 0 then
    return ah - bh - 1, l + 1000
  end
  return ah - bh, l
end

-- a < b.
local function ns_lt(ah, al, bh, bl)
  return ah < bh or (ah == bh and al < bl)
end

-- a <= b.
local function ns_le(ah, al, bh, bl)
  return ah < bh or (ah == bh and al <= bl)
end

-- a - b, or 0 when b > a.
local function ns_sub_sat(ah, al, bh, bl)
  if ns_lt(ah, al, bh, bl) then
    return 0, 0
  end
  return ns_sub(ah, al, bh, bl)
end

-- n * b, for a whole n: n * l < 2^32 * 1000 is exact, and so is n * h for every product the
-- algorithms form (at most a full bucket, which a Quota bounds).
local function ns_mul(n, bh, bl)
  local nl = n * bl
  local carry = floor(nl / 1000)
  return n * bh + carry, nl - carry * 1000
end

-- floor(a / b), for b > 0 and a quotient of at most a bucket's burst (a u32). The quotient of
-- the doubles is within one of it; the products that check it are exact.
local function ns_div(ah, al, bh, bl)
  local q = floor((ah * 1000 + al) / (bh * 1000 + bl))
  local ph, pl = ns_mul(q, bh, bl)
  if ns_lt(ah, al, ph, pl) then
    return q - 1
  end
  ph, pl = ns_add(ph, pl, bh, bl)
  if ns_le(ph, pl, ah, al) then
    return q + 1
  end
  return q
end

-- A span in ticks, rounded up to the microsecond.
local function ns_ceil(h, l)
  if l > 0 then
    return h + 1
  end
  return h
end

-- The states stored as strings (every algorithm but the sliding window log, each of whose files
-- names its integers in order, as "a:b"; see `LAYOUTS`), cached for one call:
-- the first read of a key does the GET; later reads and writes in the same call work here;
-- `flush_states` writes each key whose final text differs from what was read, once. So the
-- checks of one call on one hot key cost one GET and at most one SET, and each check sees the
-- state the checks before it left, exactly as separate calls would.
--
-- states[key] = { read = text or false, fields = integers or false, ttl = ticks, saved = bool }
-- The integers are shared with the algorithms, which only read them. Only a state saved during
-- the call is written back.
local states = {}
-- Keys in the order they were first read, so the writes at the end are in a fixed order.
local state_order = {}
-- While a check of several limits runs: for each key it wrote, the state before its first
-- write, so that a check that fails leaves the states as they were (`rollback_states`). A check
-- of one limit needs none: its algorithm writes only once it has read and computed everything.
local journal = nil

-- A state's integers (one to three) are stored as little-endian doubles, 8 bytes each: every
-- one is below 2^53, so exact, and reading or writing them costs Redis far less than decimal
-- text (no parsing, no formatting). Anything else is no state of this script: the check fails.
local LAYOUTS = { [8] = '<d', [16] = '<dd', [24] = '<ddd' }

local NOT_A_STATE = 'rate-limit: the value at this key is not a state of this limit'

-- The integers of a state's text, false for no text, or nil for a text no state has.
local function fields_of(text)
  if not text then
    return false
  end
  local n = #text
  if n == 8 then
    return { (sunpack('<d', text)) }
  elseif n == 16 then
    local a, b = sunpack('<dd', text)
    return { a, b }
  elseif n == 24 then
    local a, b, c = sunpack('<ddd', text)
    return { a, b, c }
  end
  return nil
end

local function parse_fields(text)
  local fields = fields_of(text)
  if fields == nil then
    error(NOT_A_STATE, 0)
  end
  return fields
end

-- A call of one check of one limit (`decide`'s fast path) keeps its one state here instead,
-- with no table per call: `single` is true while it runs, `single_fields` the integers (false:
-- no state), `single_ttl` the TTL of a saved state and `single_saved` whether one was saved.
local single = false
local single_fields, single_ttl, single_saved = false, 0, false

local function state_of(key)
  local s = states[key]
  if not s then
    -- GET answers false for a missing key.
    local text = call('GET', key)
    s = { read = text, fields = parse_fields(text), ttl = 0, saved = false }
    states[key] = s
    state_order[#state_order + 1] = key
  end
  return s
end

-- Reads a state (see `LAYOUTS`). Returns the integers (not to be modified),
-- or nil when there is no state.
local function load_fields(key)
  if single then
    return single_fields or nil
  end
  local fields = state_of(key).fields
  if not fields then
    return nil
  end
  return fields
end

-- Milliseconds for PEXPIRE from ticks: rounded up, at least 1, so a key outlives its state.
local function ttl_ms(ticks)
  return format('%d', max(1, ceil(ticks / 1000)))
end

-- Records the state a transition left, as the Rust transitions assign `*state`: nil (the state
-- is full again) deletes the key; otherwise the integers live for `ttl` ticks, the time until
-- the state is full again.
local function save_fields(key, fields, ttl)
  if single then
    single_fields, single_ttl, single_saved = fields or false, ttl, true
    return
  end
  local s = state_of(key)
  if journal and journal[key] == nil then
    journal[key] = { fields = s.fields, ttl = s.ttl, saved = s.saved }
  end
  s.fields = fields or false
  s.ttl = ttl
  s.saved = true
end

-- Undoes what the current check wrote.
local function rollback_states()
  if journal then
    for key, before in pairs(journal) do
      local s = states[key]
      s.fields = before.fields
      s.ttl = before.ttl
      s.saved = before.saved
    end
  end
end

-- The stored bytes of a state (see `LAYOUTS`). `+ 0` turns a -0 into 0, so that a state equal to
-- the one read is stored as the same bytes, and not written again (see `flush_states`).
local function state_text(fields)
  local n = #fields
  if n == 1 then
    return pack('<d', fields[1] + 0)
  elseif n == 2 then
    return pack('<dd', fields[1] + 0, fields[2] + 0)
  end
  return pack('<ddd', fields[1] + 0, fields[2] + 0, fields[3] + 0)
end

-- The server's time in ticks when the call reads it (TIME), for `flush_states`; false when the
-- client's clock gives the time, which the server's expiry cannot be set against.
local server_now = false

-- Writes every state saved during the call whose text changed: `SET` with the last TTL computed
-- for it, or `DEL` if it is full again. On the server's time, the expiry is set as an instant
-- (`PXAT`, rounded up to the millisecond): a relative `PX` costs Redis more, since it rewrites
-- the command to an instant for replicas. A state equal to the text read is not rewritten: its
-- expiry is already right (a state is full again at an instant its text fixes).
local function write_state(key, read, fields, ttl)
  local text = false
  if fields then
    text = state_text(fields)
  end
  if text ~= read then
    if text then
      if server_now then
        -- At least the next millisecond, as `ttl_ms` gives at least one: an instant that
        -- has come would delete the key.
        local at = max(ceil((server_now + ttl) / 1000), floor(server_now / 1000) + 1)
        call('SET', key, text, 'PXAT', at)
      else
        call('SET', key, text, 'PX', ttl_ms(ttl))
      end
    else
      call('DEL', key)
    end
  end
end

local function flush_states()
  for _, key in ipairs(state_order) do
    local s = states[key]
    if s.saved then
      write_state(key, s.read, s.fields, s.ttl)
    end
  end
end
