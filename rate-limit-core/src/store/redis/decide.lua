-- The entry point, registered as the library's one function: decides a batch of checks, one
-- after the other in the order given, all at one instant, exactly as separate calls at that
-- instant would.
--
-- keys: the state keys of every check, in order: one per limit. The keys of one check share a
-- hash tag; a key may appear in several checks.
-- args: now in ticks ('' to read the server's TIME, once for the whole call), then one argument
-- per entry, its integers separated by spaces: its number of limits n, cost, mode (0 a peek, 1
-- a check, 2 a refund), repeat count r, number of groups g, for a refund the ticks since the
-- charge was made, then six integers per limit: algorithm code, limit, burst, period in ticks,
-- and the emission interval in nanoseconds as whole microseconds and the nanoseconds left. An
-- entry stands for g groups of n keys in a row, each checked r times in a row, decided one
-- after the other: identical checks of one key are sent once, with a count, and checks that
-- differ only in their keys share one entry. One argument per entry, because Redis spends
-- about a thousand instructions on each argument of a call (reading it, and making a Lua
-- string of it), and an entry read before is found by its string alone (see `entries`).
-- Returns one binary string, the records of every check in order: per limit, three
-- little-endian doubles: remaining, reset after, and retry after, which is -1 when the check
-- was allowed and -2 when it is denied for ever (its cost is above the capacity, which the
-- client knows from the limit); or, if that check failed, -1 (where a remaining count is never
-- negative), the length of its error message as a double, and the message.
-- One string, because Redis converts each element of a reply table at a cost of its own and the
-- client parses one string far faster than as many integers; the doubles of consecutive records
-- are packed together, in one struct.pack per 240 values (a call of it costs some hundreds of
-- instructions, each value a few dozen). Every value is an integer of at most 2^53, so its
-- double is exact.
-- A check that fails (a key of the wrong type, ...) leaves the text states as they were before
-- it, and the other checks of the call are decided as if it had not been sent.
--
-- The library's code runs once, when it is loaded; a call runs only `decide`. What lives at the
-- library's level from call to call (`entries`) depends only on the argument it is found by.
local KEYS, ARGV

-- Each is called as algorithm(st, now, p, cost, commit), st the state's record (see `states`;
-- the sliding window log, whose state is read in pieces, is given its key), and returns five
-- values (not a table, which would cost an allocation per check; only a check of several limits
-- keeps each limit's answer in a table until all are decided): allowed, capacity, remaining,
-- reset after, and retry after or -1.
local algorithms = {
  token_bucket, leaky_bucket, fixed_window, sliding_window_log, sliding_window, gcra,
}

-- Each refund is called as refund(st, now, p, cost, at) (the log's with its key), in the same
-- order: gives back `cost`
-- charged at tick `at`, and returns nothing (the entry point peeks after it).
-- Each algorithm's run, in the same order, or false: run(st, now, p, cost, commit, r, vs, m)
-- decides r checks in a row of one key, as r calls of the algorithm would, appends their three
-- values each to vs[m + 1 ..] and returns the new m; or nil, having done nothing, when it does
-- not take the case (see `gcra_run`).
local runs = {
  token_bucket_run, leaky_bucket_run, fixed_window_run, false, sliding_window_run, gcra_run,
}

-- The integers each algorithm's text state has at least, in the same order (the log's state is
-- no text): a text of fewer is no state of the limit, which every path answers with the check's
-- failure rather than let the algorithm raise on a nil (the call's error).
local needs = { 2, 2, 2, 1, 3, 1 }

local refunds = {
  token_bucket_refund, leaky_bucket_refund, fixed_window_refund, sliding_window_log_refund,
  sliding_window_refund, gcra_refund,
}

-- The answers of the call, in order: the values of the records not packed yet (vals[1 .. nv];
-- the table is kept from call to call, only its first nv values count), and the packed parts of
-- the reply (parts[1 .. np]).
local vals, nv = {}, 0
local parts, np = {}, 0
-- Values packed by one struct.pack, at most: what it takes stays well within Lua's C stack.
local SLICE = 240
-- struct.pack's format for n doubles, by n.
local formats = {}

-- The call's instant in ticks.
local now
-- The seconds of the last TIME read, and them in ticks.
local time_s, time_ticks = false, 0

-- The entries read so far, by their argument: { n, cost, commit, repeats, fns, ps, err, rfns,
-- since, groups, log, one }, err the message when a limit cannot be decided (an unknown
-- algorithm), or false when n is not even readable; rfns the refund functions and since the
-- ticks since the charge for a refund (mode 2), else false; log whether a limit is a sliding
-- window log; one whether the entry is a check or peek of one limit of a text state, once, of
-- one key (what `decide_one` decides). Kept from call to call: checks mostly repeat the same few
-- entries (a hot key's, every client's one limit), and a Lua string is interned, so
-- finding an entry costs one table lookup where reading it costs parsing ten integers. The
-- parameters are only read, never changed. Emptied when it holds `MAX_ENTRIES`. Refunds are not
-- kept: each carries its own charge time, and would only push the checks' entries out.
local entries = {}
local entry_count = 0
local MAX_ENTRIES = 256

-- The entry whose argument is `spec` (see `decide`), read and kept in `entries`.
local function read_entry(spec)
  local v = {}
  for d in gmatch(spec, '%d+') do
    v[#v + 1] = tonumber(d)
  end
  local n = v[1]
  -- A refund's head has one more integer: the ticks since the charge.
  local head = 5
  if v[3] == 2 then
    head = 6
  end
  if not n or n < 1 or #v ~= head + 6 * n or v[5] < 1 then
    return false
  end
  local fns, ps, rfns, log = {}, {}, false, false
  if head == 6 then
    rfns = {}
  end
  for i = 1, n do
    local b = head + (i - 1) * 6
    local fn = algorithms[v[b + 1]]
    if not fn then
      local err = 'rate-limit: unknown algorithm code ' .. tostring(v[b + 1])
      return { n, v[2], v[3] == 1, v[4], nil, nil, err, false, false, v[5] }
    end
    -- The interval (ih, il) and a full bucket, tau = burst * interval (th, tl), in
    -- nanoseconds.
    local p = { limit = v[b + 2], burst = v[b + 3], period = v[b + 4], ih = v[b + 5], il = v[b + 6] }
    p.th, p.tl = ns_mul(p.burst, p.ih, p.il)
    -- The log's list is written in place by a refund: refunded after the other limits.
    p.log = v[b + 1] == 4
    log = log or p.log
    p.run = runs[v[b + 1]]
    p.need = needs[v[b + 1]]
    fns[i], ps[i] = fn, p
    if rfns then
      rfns[i] = refunds[v[b + 1]]
    end
  end
  local one = n == 1 and not rfns and not log and v[4] == 1 and v[5] == 1
  return { n, v[2], v[3] == 1, v[4], fns, ps, false, rfns, rfns and v[6], v[5], log, one }
end

local function entry_of(spec)
  local e = entries[spec]
  if not e then
    e = read_entry(spec)
    if e and e[8] then
      return e
    end
    if entry_count >= MAX_ENTRIES then
      entries, entry_count = {}, 0
    end
    entries[spec] = e
    entry_count = entry_count + 1
  end
  return e
end

-- The last value of a limit's record: retry after, -1 if allowed, -2 if never.
local function retry_value(allowed, retry)
  if allowed then
    return -1
  elseif retry < 0 then
    return -2
  end
  return retry
end

-- Appends one limit's answer, the five values an algorithm returns, in a table.
local function push(r)
  vals[nv + 1], vals[nv + 2], vals[nv + 3] = r[3], r[4], retry_value(r[1], r[5])
  nv = nv + 3
end

-- Packs the values not packed yet into parts.
local function pack_vals()
  local i = 1
  while i <= nv do
    local j = i + SLICE - 1
    if j > nv then
      j = nv
    end
    local n = j - i + 1
    local format = formats[n]
    if not format then
      format = '<' .. srep('d', n)
      formats[n] = format
    end
    np = np + 1
    parts[np] = pack(format, unpack(vals, i, j))
    i = j + 1
  end
  nv = 0
end

-- A check's error record.
local function failure(message)
  return pack('<dd', -1, #message) .. message
end

-- Appends a packed part (a check's record, or its error record) after the values before it.
local function append(part)
  pack_vals()
  np = np + 1
  parts[np] = part
end

-- Appends a check's error record.
local function fail(message)
  append(failure(message))
end

-- The call's reply, its values and parts joined; `parts` is emptied for the next call.
local function reply()
  pack_vals()
  local r = parts[1]
  if np > 1 then
    r = concat(parts, '', 1, np)
  end
  for i = 1, np do
    parts[i] = nil
  end
  return r
end

-- What limit i of a check whose keys start after k is decided on: the record of its state, or
-- the key of a log's list. Raises if the state cannot be read.
local function target(k, i, p)
  if p.log then
    return KEYS[k + i]
  end
  local st = state_of(KEYS[k + i], k + i)
  if st.fields and not st.fields[p.need] then
    error(NOT_A_STATE, 0)
  end
  return st
end

-- For each of the n keys KEYS[k + 1 .. k + n], the position of the first with its name.
local function firsts(k, n)
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
  return first
end

-- Each limit's answer for `cost` (charged if `commit`), a limit listed twice decided once and
-- its other places given that answer; and whether every limit allows.
local function decide_each(k, n, fns, ps, first, cost, commit)
  local raws = {}
  local all = true
  for i = 1, n do
    if first[i] < i then
      raws[i] = raws[first[i]]
    else
      raws[i] = { fns[i](target(k, i, ps[i]), now, ps[i], cost, commit) }
    end
    all = all and raws[i][1]
  end
  return raws, all
end

-- One check of several limits, whose keys are KEYS[k + 1 .. k + n]: appends its n records.
-- All or nothing: decide every limit without charging, then charge only if all allow. The
-- states it writes are journaled, so that a failure can undo them. A limit listed twice has
-- one key (the key names the limit): it is decided and charged once, and each of its places
-- gets that answer.
local function check_all(k, n, fns, ps, cost, commit)
  journal = {}
  local first = firsts(k, n)
  local raws, all = decide_each(k, n, fns, ps, first, cost, false)
  if all and commit then
    raws = decide_each(k, n, fns, ps, first, cost, true)
  end
  for i = 1, n do
    push(raws[i])
  end
end

-- One refund, whose keys are KEYS[k + 1 .. k + n]: gives `cost`, charged at tick `at`, back on
-- every limit (a limit listed twice once, as a check charges it once), then appends a peek of
-- `cost` for each limit. All in this one call, so no check runs between the limits. The text
-- states it writes are journaled, so that a failure undoes them; logs' lists are written in place,
-- so they are refunded last, once every other limit has been.
local function refund_all(k, n, fns, rfns, ps, cost, at)
  journal = {}
  local first = firsts(k, n)
  for pass = 1, 2 do
    for i = 1, n do
      if first[i] == i and (ps[i].log == (pass == 2)) then
        rfns[i](target(k, i, ps[i]), now, ps[i], cost, at)
      end
    end
  end
  local raws = decide_each(k, n, fns, ps, first, cost, false)
  for i = 1, n do
    push(raws[i])
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

-- The integers of a state's text (into `own` when it has an expiry, the common text) and the
-- expiry it records; nil when the text is no state of a limit whose state has `need` integers.
local function state_fields(text, own, need)
  local n = #text
  local layout = LAYOUTS[n]
  local fields, exp
  if layout then
    -- The integers, then the expiry and the position after it.
    local a, b, c, d = sunpack(layout, text)
    if n == 12 then
      b, c, d = nil, nil, b
    elseif n == 20 then
      c, d = nil, c
    end
    fields, exp = own, d
    fields[1], fields[2], fields[3] = a, b, c
  else
    fields, exp = fields_of(text)
  end
  if fields and fields[need] then
    return fields, exp
  end
  return nil, 0
end

-- The state's record of `decide_one` and `lean`, kept from call to call.
local one = { read = false, fields = false, exp = 0, ttl = 0, saved = false, own = { 0, 0, 0 } }
-- The three values of `decide_one`'s answer, when its algorithm's run gives it.
local one_vals = { 0, 0, 0 }

-- A call of one check of one limit (not a refund, not a log), the common call: its state is
-- read and written directly, with none of the call's tables (its record is `one`, its integers
-- read into the record's own table), and its record is the reply. Decides as the general path
-- does, through the algorithm's run when it takes the case (fewer calls than the algorithm's).
local function decide_one(key, fn, p, cost, commit)
  -- redis.pcall: a key of another type is this check's error record, not the call's error.
  local read = rpcall('GET', key)
  local st = one
  local fields, exp = false, 0
  if read then
    fields, exp = state_fields(read, st.own, p.need)
    if not fields then
      -- An error reply is a table (told apart only here: type() is a C call).
      if type(read) == 'table' then
        return failure(message(read))
      end
      return failure(NOT_A_STATE)
    end
  end
  st.read, st.fields, st.exp, st.ttl, st.saved = read, fields, exp, 0, false
  local run = p.run
  if run and run(st, now, p, cost, commit, 1, one_vals, 0) then
    if st.saved then
      write_state(key, read, exp, st.fields, st.ttl)
    end
    return pack('<ddd', one_vals[1], one_vals[2], one_vals[3])
  end
  local allowed, _, remaining, reset, retry = fn(st, now, p, cost, commit)
  if st.saved then
    write_state(key, read, exp, st.fields, st.ttl)
  end
  if allowed then
    retry = -1
  elseif retry < 0 then
    retry = -2
  end
  return pack('<ddd', remaining, reset, retry)
end

-- The keys `gcra_lean` has decided, each with the serial of the call that decided it: a key
-- found with the current call's serial comes a second time in the call. Kept from call to call
-- (a table that grows costs Redis a rehash at each doubling), emptied when it holds
-- `SEEN_MAX` keys.
local seen, seen_count, serial = {}, 0, 0
local SEEN_MAX = 4096

-- Starts a lean call of g keys: a new serial, and `seen` emptied if it would grow past its
-- bound.
local function lean_begin(g)
  serial = serial + 1
  if seen_count + g > SEEN_MAX then
    seen, seen_count = {}, 0
  end
end

-- A call of one entry only: one GCRA limit of a whole-microsecond interval, once each (no
-- repeats) for each of its g keys KEYS[1 .. g]: the HTTP workload of many clients under one
-- quota, which costs Redis about two thirds of what the general path does for it
-- (`bench/redis_instructions.sh`, shapes keys-32 and new-32). Each key's state is read from
-- `texts` (MGET), decided and written at once, in locals, with none of the general path's
-- records, tables or function calls per check: what `decide` and `gcra_us` would do, state by
-- state, and the same writes `write_state` would make. A key the call has already decided (it comes twice), or whose text
-- is not a one-integer state, goes through `decide_one`, which reads it afresh.
local function gcra_lean(g, fn, p, cost, commit)
  lean_begin(g)
  local ks, ts, vs, m, t, mark = KEYS, texts, vals, nv, now, seen
  local t_server = server_now
  local burst, th, ih = p.burst, p.th, p.ih
  local step = cost * ih
  for i = 1, g do
    local key, text = ks[i], ts[i]
    local tat, exp, fast = t, 0, true
    if mark[key] == serial then
      fast = false
    else
      mark[key] = serial
      seen_count = seen_count + 1
      if text then
        if #text == 12 then
          local a, e = sunpack('<dI4', text)
          if a > t then
            tat = a
          end
          exp = e
        else
          fast = false
        end
      end
    end
    if fast and not text and not (commit and cost <= burst) then
      -- No write to tell a missing key from a key of another type: GET tells.
      fast = false
    end
    if not fast then
      nv = m
      append(decide_one(key, fn, p, cost, commit))
      m = 0
    else
      -- The state is full again (or was never charged) when tat is now: dropped.
      local retry = -2
      local write = false
      if cost <= burst then
        local allow_at = tat + step - th
        if allow_at <= t then
          retry = -1
          if commit then
            tat = tat + step
            write = true
          end
        else
          retry = allow_at - t
        end
      end
      local failed = nil
      if write then
        -- write_state(key, text, exp, { tat }, tat - t), its writes.
        local kept = exp * 1000000
        local new, unit, at_text = nil, 'EXAT', nil
        if not t_server then
          -- The client's clock: a relative expiry, set at every write.
          new, unit, at_text = pack('<dI4', tat, 0), 'PX', ttl_ms(tat - t)
        elseif text and kept >= tat and kept > t then
          -- The key's expiry is late enough: kept, and the text overwritten in place.
          new = pack('<dI4', tat, exp)
          if new ~= text then
            call('SETRANGE', key, '0', new)
          end
          new = nil
        else
          local e
          e, at_text = expiry(t, tat)
          new = pack('<dI4', tat, e)
        end
        if new and new ~= text then
          failed = set_state(key, text, new, unit, at_text, true)
        end
      elseif text and tat == t then
        -- Dropped: the key goes.
        call('DEL', key)
      end
      if failed then
        nv = m
        fail(failed)
        m = 0
      else
        local free = t + th - tat
        if free <= 0 then
          free = 0
        else
          free = free / ih
          free = free - free % 1
        end
        vs[m + 1], vs[m + 2], vs[m + 3] = free, tat - t, retry
        m = m + 3
      end
    end
    nv = m
  end
end

-- As `gcra_lean`, for the other algorithms of a text state: each key decided on `decide_one`'s
-- record (each key's use of it ends before the next key's, a fallback's included), read from
-- `texts`, through the algorithm's run (or the algorithm when its run does not take
-- the case), and written at once by `write_state`. A key that comes twice in the call or whose
-- text is no state's goes through `decide_one`.
local function lean(g, fn, p, cost, commit)
  lean_begin(g)
  local ks, ts, t, mark, st, run, need = KEYS, texts, now, seen, one, p.run, p.need
  for i = 1, g do
    local key, text = ks[i], ts[i]
    local fast, fields, exp = true, false, 0
    if mark[key] == serial then
      fast = false
    else
      mark[key] = serial
      seen_count = seen_count + 1
      if text then
        fields, exp = state_fields(text, st.own, need)
      end
    end
    if fast and text and not fields then
      -- No state of this limit: the check fails, and nothing is written. (Before anything
      -- raises: a call that raised would leave the keys before this one written.)
      fail(NOT_A_STATE)
    elseif fast then
      st.read, st.fields, st.exp, st.ttl, st.saved = text, fields, exp, 0, false
      local m = nv
      local m2 = run and run(st, t, p, cost, commit, 1, vals, m)
      if not m2 then
        local allowed, _, remaining, reset, retry = fn(st, t, p, cost, commit)
        if allowed then
          retry = -1
        elseif retry < 0 then
          retry = -2
        end
        vals[m + 1], vals[m + 2], vals[m + 3] = remaining, reset, retry
      end
      nv = m + 3
      local failed = nil
      if not text and not (st.saved and st.fields) then
        -- Nothing written to tell a missing key from a key of another type: GET tells.
        local r = rpcall('GET', key)
        if r then
          failed = type(r) == 'table' and message(r) or NOT_A_STATE
        end
      elseif st.saved then
        failed = write_state(key, text, exp, st.fields, st.ttl, true)
      end
      if failed then
        nv = m
        fail(failed)
      end
    else
      append(decide_one(key, fn, p, cost, commit))
    end
  end
end

local function decide(keys, args)
  KEYS, ARGV = keys, args
  if not call then
    bind_globals()
  end
  if ARGV[1] == '' then
    local t = call('TIME')
    -- Lua reads a number with strtod, some 1,700 instructions of Redis for the seconds: they
    -- are read again only when they change (strings are interned: == compares pointers).
    if t[1] ~= time_s then
      time_s, time_ticks = t[1], tonumber(t[1]) * 1000000
    end
    now = time_ticks + tonumber(t[2])
    server_now = now
  else
    now = tonumber(ARGV[1])
    server_now = false
  end
  if #ARGV == 2 then
    local e = entry_of(ARGV[2])
    if e and e[12] then
      return decide_one(KEYS[1], e[5][1], e[6][1], e[2], e[3])
    end
    local nk = #KEYS
    if e and nk > 1 and e[10] == nk and e[1] == 1 and e[4] == 1 and not e[7]
      and not e[8] and not e[11] then
      local p = e[6][1]
      prefetch_states(KEYS, nk)
      nv, np = 0, 0
      if p.run == gcra_run and p.il == 0 then
        gcra_lean(nk, e[5][1], p, e[2], e[3])
      else
        lean(nk, e[5][1], p, e[2], e[3])
      end
      texts, text_keys = nil, nil
      return reply()
    end
    if e and e[11] and e[1] == 1 and e[4] == 1 and e[10] == 1 and not e[7] and not e[8] then
      local remaining, reset, retry = log_once(KEYS[1], now, e[6][1], e[2], e[3])
      if not remaining then
        return failure(reset)
      end
      return pack('<ddd', remaining, reset, retry)
    end
  end
  -- All set anew, even `texts`: a call that raised may have left its own.
  states, state_order, journal, logs, texts, text_keys = {}, {}, nil, {}, nil, nil
  nv, np, pooled, nstates = 0, 0, 0, 0
  -- Every key's text read at once, unless a log is among them: MGET would read whole logs
  -- for nothing (each log reads only its trailer and the entries it needs).
  local nk = #KEYS
  if nk > 1 then
    local has_log = false
    for a = 2, #ARGV do
      local e = entry_of(ARGV[a])
      if e and e[11] then
        has_log = true
        break
      end
    end
    if not has_log then
      prefetch_states(KEYS, nk)
    end
  end
  local k = 0
  for a = 2, #ARGV do
    local e = entry_of(ARGV[a])
    if not e then
      -- Not even its number of limits: one error record, and the keys that follow are not
      -- known (the client reads a reply that does not line up).
      fail('rate-limit: a malformed entry')
      break
    end
    local n, cost, commit, repeats, fns, ps = e[1], e[2], e[3], e[4], e[5], e[6]
    if n == 1 and not e[7] and not e[8] and not ps[1].log then
      -- One limit of a text state, for each of the g keys that follow: its state is read here,
      -- without raising, and its algorithm, which only computes once it has it, cannot fail:
      -- no pcall. The common entry, a key's alone or many keys' of one limit: what each key
      -- costs is kept to the fewest Lua instructions.
      local fn, p = fns[1], ps[1]
      local run = p.run
      for idx = k + 1, k + e[10] do
        local key = KEYS[idx]
        local s, err = states[key], nil
        if not s then
          -- read_state, inline where MGET read a state's text and a pooled record is free: a
          -- call costs Redis hundreds of instructions.
          local text = texts and texts[idx]
          local n = text and #text
          local layout = n and LAYOUTS[n]
          local next = pooled + 1
          s = pool[next]
          if layout and s then
            -- The integers, then the expiry and the position after it.
            local a, b, c, d = sunpack(layout, text)
            if n == 12 then
              b, c, d = nil, nil, b
            elseif n == 20 then
              c, d = nil, c
            end
            local f = s.own
            f[1], f[2], f[3] = a, b, c
            s.read, s.fields, s.exp, s.saved, s.key = text, f, d, false, key
            pooled, states[key] = next, s
            local o = nstates + 1
            state_order[o], nstates = s, o
          else
            s, err = read_state(key, idx)
          end
        end
        if s and s.fields and not s.fields[p.need] then
          s, err = nil, NOT_A_STATE
        end
        local m = nil
        if s and run then
          m = run(s, now, p, cost, commit, repeats, vals, nv)
        end
        if m then
          nv = m
        elseif s then
          -- Packed here rather than through push, which would cost this, the hot path, a
          -- table or a call per check; in locals, not upvalues, while the repeats run.
          local vs, m, t = vals, nv, now
          for _ = 1, repeats do
            local allowed, _, remaining, reset, retry = fn(s, t, p, cost, commit)
            if allowed then
              retry = -1
            elseif retry < 0 then
              retry = -2
            end
            vs[m + 1], vs[m + 2], vs[m + 3] = remaining, reset, retry
            m = m + 3
          end
          nv = m
        else
          for _ = 1, repeats do
            fail(err)
          end
        end
      end
      k = k + e[10]
    else
      -- g groups of keys, each checked r times.
      for _ = 1, e[10] do
        if e[7] then
          for _ = 1, repeats do
            fail(e[7])
          end
        elseif e[8] then
          -- A refund: the charge time is now less the ticks since the charge, not before 0.
          local at = max(now - e[9], 0)
          for _ = 1, repeats do
            local m = nv
            local done, err = pcall(refund_all, k, n, fns, e[8], ps, cost, at)
            if not done then
              rollback_states()
              nv = m
              fail(message(err))
            end
            journal = nil
          end
        elseif n == 1 then
          -- One limit of a log: its record is read here, without raising, and its check, which
          -- then reads only a string's bytes, cannot fail: no pcall.
          local p, key = ps[1], KEYS[k + 1]
          local l, err = nil, nil
          if repeats == 1 and not logs[key] then
            -- Many keys' one check each: decided and written at once, with no record.
            local remaining, reset, retry = log_once(key, now, p, cost, commit)
            if remaining then
              local m = nv
              vals[m + 1], vals[m + 2], vals[m + 3] = remaining, reset, retry
              nv = m + 3
            else
              fail(reset)
            end
          else
            l, err = log_state(key)
          end
          if l then
            nv = log_run(key, l, now, p, cost, commit, repeats, vals, nv)
          elseif err then
            for _ = 1, repeats do
              fail(err)
            end
          end
        else
          for _ = 1, repeats do
            local m = nv
            local done, err = pcall(check_all, k, n, fns, ps, cost, commit)
            if not done then
              -- Undo its states and drop its partial answer; its answer is the message.
              rollback_states()
              nv = m
              fail(message(err))
            end
            journal = nil
          end
        end
        k = k + n
      end
    end
  end
  flush_states()
  flush_logs()
  local r = reply()
  -- Nothing of the call is kept but `vals`, numbers: the other tables go with it.
  states, state_order, logs, texts, text_keys = nil, nil, nil, nil, nil
  return r
end
