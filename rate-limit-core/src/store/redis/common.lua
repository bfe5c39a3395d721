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
local format, gmatch, match, concat, srep
local tonumber, tostring, pcall, type, pairs, ipairs, unpack
local call, rpcall, pack, sunpack

local function bind_globals()
  floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
  format, gmatch, match, concat = string.format, string.gmatch, string.match, table.concat
  srep = string.rep
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
-- names its integers in order, as "a:b"; see `LAYOUTS`), cached for one call: a call of
-- several keys reads all their texts first (`prefetch_states`: one MGET), a lone key's by GET;
-- the first use of a key makes its record from its text; later reads and writes in the same
-- call work on the record; `flush_states` writes each key whose final text differs from what
-- was read, once. So the checks of one call on one hot key cost one read and at most one write,
-- and each check sees the state the checks before it left, exactly as separate calls would.
--
-- states[key] = { read = text or false, fields = integers or false, exp = the key's expiry as
-- the text read records it (see `LAYOUTS`), ttl = ticks, saved = bool, key = the key, own =
-- the record's table of integers }, the state's record, taken from `pool`.
-- The algorithms are handed the record itself (`st`), read its integers (`st.fields`, false for
-- no state; shared, only read) and `save` their result into it: no lookup by key and no call
-- to find it, which a check, costing Redis about fifty instructions per Lua instruction, feels.
-- Only a state saved during the call is written back.
local states = {}
-- The records in the order their keys were first read (state_order[1 .. nstates]), so the
-- writes at the end are in a fixed order.
local state_order = {}
local nstates = 0
-- While a check of several limits runs: for each key it wrote, the state before its first
-- write, so that a check that fails leaves the states as they were (`rollback_states`). A check
-- of one limit needs none: its algorithm writes only once it has read and computed everything.
local journal = nil

-- A state's integers (one to three) are stored as little-endian doubles, 8 bytes each: every
-- one is below 2^53, so exact, and reading or writing them costs Redis far less than decimal
-- text (no parsing, no formatting). After them, the expiry the key was given, in whole seconds
-- of the server's clock (a 4-byte unsigned integer), or 0 when it was set on the client's
-- clock: a write that needs no later expiry keeps the key's (see `write_state`). A text of
-- integers alone (8, 16 or 24 bytes, an earlier version's) is read with an expiry of 0.
-- Anything else is no state of this script: the check fails.
local LAYOUTS = { [12] = '<dI4', [20] = '<ddI4', [28] = '<dddI4' }

local NOT_A_STATE = 'rate-limit: the value at this key is not a state of this limit'

-- The integers of a state's text written without an expiry (by an earlier version: 8, 16 or
-- 24 bytes), and 0; nil for a text no state has. The texts with one are read by `LAYOUTS`.
local function fields_of(text)
  local n = #text
  if n == 8 then
    return { (sunpack('<d', text)) }, 0
  elseif n == 16 then
    local a, b = sunpack('<dd', text)
    return { a, b }, 0
  elseif n == 24 then
    local a, b, c = sunpack('<ddd', text)
    return { a, b, c }, 0
  end
  return nil, 0
end


-- The records of the call's states are kept from call to call, each with a table of its own
-- for its integers (`own`), and reused: a table costs Redis some 1,500 instructions to make and
-- collect, and a record and its integers were two per key. `pooled` counts those the call has
-- taken. Nothing a record holds is read in a later call before it is set again.
local pool, pooled = {}, 0
-- Records kept, at most: a call of more states makes the others anew.
local POOL_MAX = 1024

-- A record with nothing in it yet.
local function blank_record()
  return {
    read = false, fields = false, exp = 0, ttl = 0, saved = false, key = false,
    own = { 0, 0, 0 },
  }
end

-- The texts of the call's keys, read at its start by `prefetch_states`: texts[i] is KEYS[i]'s,
-- or false when MGET found no string there; nil before the read. `missing`: whether every key
-- MGET found nothing at is missing (else one may hold another type, and its GET tells), nil
-- until a state needs to know (`absent_are_missing`).
local texts, missing = nil, nil
-- The keys whose texts `texts` holds.
local text_keys = nil

-- Keys MGET reads at once, at most: what unpack may put on Lua's stack.
local MGET_SLICE = 512

-- Reads the texts of the call's keys `keys[1 .. nk]` with one MGET per 512 keys, rather than
-- one GET each as a state is first needed: a command called from the script costs Redis some
-- 4,000 instructions whatever it does, a key more of MGET under 2,000. A log's key is read too
-- (MGET answers false for a list), and never used.
local function prefetch_states(keys, nk)
  local all = nil
  for i = 1, nk, MGET_SLICE do
    local j = i + MGET_SLICE - 1
    if j > nk then
      j = nk
    end
    local part = call('MGET', unpack(keys, i, j))
    if all then
      for x = 1, #part do
        all[i + x - 1] = part[x]
      end
    else
      all = part
    end
  end
  texts, missing, text_keys = all, nil, keys
end

-- Whether every key of the call MGET found nothing at is missing: MGET answers false for a key
-- holding another type as for a missing one, and one EXISTS of them all tells.
local function absent_are_missing()
  local absent, na = {}, 0
  for i = 1, #texts do
    if not texts[i] then
      na = na + 1
      absent[na] = text_keys[i]
    end
  end
  for i = 1, na, MGET_SLICE do
    local j = i + MGET_SLICE - 1
    if j > na then
      j = na
    end
    if call('EXISTS', unpack(absent, i, j)) ~= 0 then
      return false
    end
  end
  return true
end

-- The state of `key`, KEYS[idx], in the call's cache, read if it is not there yet (from
-- `texts`, or by GET); or nil and why it cannot be read (a key of another type, a text no
-- state has), without raising, so that a check of one limit needs no pcall. (The message of an
-- error reply: a table { err = message } in some versions, the message in others.) Its integers
-- are read into the record's own table. One function, with no call of another but to read the
-- text: each Lua instruction costs Redis some fifty, a call some hundreds.
local function read_state(key, idx)
  local s = states[key]
  if s then
    return s
  end
  local text = texts and texts[idx]
  if text == false and missing == nil then
    missing = absent_are_missing()
  end
  if text == nil or (not text and not missing) then
    -- GET answers false for a missing key, a table for an error (whose length, 0, is no
    -- state's: told apart only then, as type() is a C call, hundreds of instructions).
    text = rpcall('GET', key)
  end
  local a, b, c, e = false, nil, nil, 0
  if text then
    local n = #text
    if n == 12 then
      a, e = sunpack('<dI4', text)
    elseif n == 20 then
      a, b, e = sunpack('<ddI4', text)
    elseif n == 28 then
      a, b, c, e = sunpack('<dddI4', text)
    elseif n == 8 then
      a = sunpack('<d', text)
    elseif n == 16 then
      a, b = sunpack('<dd', text)
    elseif n == 24 then
      a, b, c = sunpack('<ddd', text)
    elseif type(text) == 'table' then
      return nil, tostring(text.err or text)
    else
      return nil, NOT_A_STATE
    end
  end
  local next = pooled + 1
  s = pool[next]
  if s then
    pooled = next
  else
    s = blank_record()
    if next <= POOL_MAX then
      pool[next], pooled = s, next
    end
  end
  local fields = false
  if a then
    fields = s.own
    fields[1], fields[2], fields[3] = a, b, c
  end
  s.read, s.fields, s.exp, s.saved, s.key = text, fields, e, false, key
  states[key] = s
  local n = nstates + 1
  state_order[n], nstates = s, n
  return s
end

local function state_of(key, idx)
  local s = states[key]
  if s then
    return s
  end
  local err
  s, err = read_state(key, idx)
  if not s then
    error(err, 0)
  end
  return s
end


-- Milliseconds for PEXPIRE from ticks: rounded up, at least 1, so a key outlives its state.
-- Kept by ticks (a log's TTL is its period: the same every call), at most 256 of them:
-- formatting costs Redis some 3,000 instructions, and Lua would format a number argument
-- with sprintf all the same.
local ttl_texts, ttl_count = {}, 0

local function ttl_ms(ticks)
  local text = ttl_texts[ticks]
  if not text then
    text = format('%d', max(1, ceil(ticks / 1000)))
    if ttl_count >= 256 then
      ttl_texts, ttl_count = {}, 0
    end
    ttl_texts[ticks] = text
    ttl_count = ttl_count + 1
  end
  return text
end

-- Records in the state's record `st` what a transition left, as the Rust transitions assign
-- `*state`: nil (the state is full again) deletes the key; otherwise the integers live for
-- `ttl` ticks, the time until the state is full again.
local function save(st, fields, ttl)
  if journal and journal[st] == nil then
    journal[st] = { fields = st.fields, ttl = st.ttl, saved = st.saved }
  end
  st.fields = fields or false
  st.ttl = ttl
  st.saved = true
end

-- As save(st, { a, b, c }, ttl), b and c nil for a state of fewer integers, but into the
-- table of the state already there when no check of several limits journals it: the checks of
-- a hot key rewrite one table instead of allocating one each (an allocation, and the garbage
-- collection it brings, costs Redis some 1,000 instructions). Only the record refers to that
-- table; an algorithm reads the integers it needs before it saves.
local function keep(st, ttl, a, b, c)
  local f = st.fields
  if f and not journal then
    -- Setting an absent key, even to nil, inserts it in Lua 5.1 (and may grow the table).
    f[1] = a
    if b or f[2] then
      f[2] = b
    end
    if c or f[3] then
      f[3] = c
    end
  else
    if journal and journal[st] == nil then
      journal[st] = { fields = f, ttl = st.ttl, saved = st.saved }
    end
    st.fields = { a, b, c }
  end
  st.ttl = ttl
  st.saved = true
end

-- Undoes what the current check wrote.
local function rollback_states()
  if journal then
    for s, before in pairs(journal) do
      s.fields = before.fields
      s.ttl = before.ttl
      s.saved = before.saved
    end
  end
end

-- The stored bytes of a state and the key's expiry `exp` (see `LAYOUTS`). `+ 0` turns a -0
-- into 0, so that a state equal to the one read is stored as the same bytes, and not written
-- again (see `write_state`).
local function state_text(fields, exp)
  local n = #fields
  if n == 1 then
    return pack('<dI4', fields[1] + 0, exp)
  elseif n == 2 then
    return pack('<ddI4', fields[1] + 0, fields[2] + 0, exp)
  end
  return pack('<dddI4', fields[1] + 0, fields[2] + 0, fields[3] + 0, exp)
end

-- The server's time in ticks when the call reads it (TIME), for `flush_states`; false when the
-- client's clock gives the time, which the server's expiry cannot be set against.
local server_now = false

-- The last expiry `write_state` gave, and its decimal text: the keys written in one second
-- mostly get the same one, and formatting a number costs Redis thousands of instructions.
local exp_at, exp_text = 0, '0'

-- The expiry of a key written at tick `t` whose state is full again at tick `full`: `full` in
-- milliseconds, rounded up, at least the next millisecond after `t`, then rounded up to the
-- second (whole seconds of the server's clock); and its decimal text. Rounded with `% 1`, not
-- math.floor and math.ceil: a C function call costs Redis hundreds of instructions.
local function expiry(t, full)
  local at = full / 1000
  local need = at - at % 1
  if need < at then
    need = need + 1
  end
  local least = t / 1000
  least = least - least % 1 + 1
  if need < least then
    need = least
  end
  local whole = need / 1000
  local e = whole - whole % 1
  if e < whole then
    e = e + 1
  end
  if e ~= exp_at then
    exp_at, exp_text = e, format('%d', e)
  end
  return e, exp_text
end

-- SET of a state's `text` at `key`, whose text was `read`, with an expiry (`unit` EXAT or PX,
-- `at` its decimal text). A key read as missing by MGET only (`unsure`: MGET reads a key of
-- another type as missing too) is set only if it still is missing (NX), and such a key is left
-- alone: its GET's error is the check's. Returns the check's failure message, or nil.
local function set_state(key, read, text, unit, at, unsure)
  if read or not unsure then
    call('SET', key, text, unit, at)
    return nil
  end
  if call('SET', key, text, 'NX', unit, at) then
    return nil
  end
  local r = rpcall('GET', key)
  if type(r) == 'table' then
    return tostring(r.err or r)
  end
  return NOT_A_STATE
end

-- Writes a state saved during the call (the key's text was `read`, recording the expiry `exp`):
-- `SET` of its integers if they live for `ttl` ticks more, or `DEL` if it is full again. On the
-- server's time, the key must outlive its state: it expires at the instant the state is full
-- again, rounded up to the next whole second (so by less than a second later). A key whose
-- expiry is already that late keeps it (`SETRANGE` of a text of the same length, else
-- `KEEPTTL`): setting an expiry costs Redis some four thousand instructions more than keeping
-- one, and a key checked again within the second needs no later one. A text equal to the one
-- read is not rewritten. On the client's clock
-- (no server time to set an instant against), the expiry is relative (`PX`), as the TTL
-- rounded up to the millisecond, and set at every write. Returns the check's failure message
-- (a key MGET read as missing, `unsure`, holds another type: see `set_state`), or nil.
local function write_state(key, read, exp, fields, ttl, unsure)
  if not fields then
    if read then
      call('DEL', key)
    end
    return
  end
  if server_now then
    -- The key's expiry is late enough if it is at or after the instant the state is full
    -- again, and after now (an instant that has come would delete the key).
    local kept = exp * 1000000
    if kept >= server_now + ttl and kept > server_now then
      -- state_text(fields, exp), inline: the common write of a lone check.
      local n, text = #fields, nil
      if n == 1 then
        text = pack('<dI4', fields[1] + 0, exp)
      elseif n == 2 then
        text = pack('<ddI4', fields[1] + 0, fields[2] + 0, exp)
      else
        text = pack('<dddI4', fields[1] + 0, fields[2] + 0, fields[3] + 0, exp)
      end
      if text ~= read then
        if #text == #read then
          -- Overwrites the value in place and keeps the expiry: cheaper than SET ... KEEPTTL
          -- (some 2,000 instructions less, with the offset as a string: Lua formats a number
          -- argument with sprintf).
          call('SETRANGE', key, '0', text)
        else
          call('SET', key, text, 'KEEPTTL')
        end
      end
      return
    end
    local text
    exp, text = expiry(server_now, server_now + ttl)
    return set_state(key, read, state_text(fields, exp), 'EXAT', text, unsure)
  end
  local text = state_text(fields, 0)
  if text ~= read then
    return set_state(key, read, text, 'PX', ttl_ms(ttl), unsure)
  end
end

-- Writes every state saved during the call, as `write_state` does; the common write, a state
-- whose key keeps its expiry, inline: a call costs Redis hundreds of instructions.
local function flush_states()
  local order, t = state_order, server_now
  for i = 1, nstates do
    local s = order[i]
    if s.saved then
      local fields, read, exp, ttl = s.fields, s.read, s.exp, s.ttl
      local kept = exp * 1000000
      if fields and t and kept >= t + ttl and kept > t then
        local n, text = #fields, nil
        if n == 1 then
          text = pack('<dI4', fields[1] + 0, exp)
        elseif n == 2 then
          text = pack('<ddI4', fields[1] + 0, fields[2] + 0, exp)
        else
          text = pack('<dddI4', fields[1] + 0, fields[2] + 0, fields[3] + 0, exp)
        end
        if text ~= read then
          if #text == #read then
            call('SETRANGE', s.key, '0', text)
          else
            call('SET', s.key, text, 'KEEPTTL')
          end
        end
      else
        write_state(s.key, read, exp, fields, ttl)
      end
    end
  end
end
