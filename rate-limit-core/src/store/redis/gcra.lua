-- GCRA: the twin of algorithm/gcra.rs. State "tat", with its nanoseconds after it when there are
-- any ("tat:ns").

-- Whole units of cost free at `now` when the theoretical arrival time is (th, tl) >= now.
local function gcra_remaining(now, p, th, tl)
  local xh, xl = ns_add(now, 0, p.th, p.tl)
  if not ns_lt(th, tl, xh, xl) then
    return 0
  end
  local dh, dl = ns_sub(xh, xl, th, tl)
  return ns_div(dh, dl, p.ih, p.il)
end

-- Whole units of cost free at `now` when the theoretical arrival time is the tick `at`.
local function gcra_remaining_us(now, p, at)
  local free = now + p.th - at
  if free <= 0 then
    return 0
  end
  free = free / p.ih
  return free - free % 1
end

-- An interval of whole microseconds (most quotas) keeps the TAT whole: the same arithmetic in
-- plain integers. `s` is the state read.
local function gcra_us(st, now, p, s, cost, commit)
  local tat = now
  if s and s[1] > now then
    tat = s[1]
  end
  if tat <= now then
    save(st, nil, 0)
  end
  local remaining = gcra_remaining_us
  if cost > p.burst then
    return false, p.burst, remaining(now, p, tat), tat - now, -1
  end
  local new_tat = tat + cost * p.ih
  local allow_at = new_tat - p.th
  if allow_at < 0 then
    allow_at = 0
  end
  if allow_at <= now then
    if commit then
      tat = new_tat
      keep(st, tat - now, tat)
    end
    -- remaining(now, p, tat), inline: the path of most checks.
    local free = now + p.th - tat
    if free <= 0 then
      return true, p.burst, 0, tat - now, -1
    end
    free = free / p.ih
    return true, p.burst, free - free % 1, tat - now, -1
  end
  return false, p.burst, remaining(now, p, tat), tat - now, allow_at - now
end

local function gcra(st, now, p, cost, commit)
  local s = st.fields
  if p.il == 0 and not (s and s[2]) then
    return gcra_us(st, now, p, s, cost, commit)
  end
  local th, tl = now, 0
  if s and ns_lt(now, 0, s[1], s[2] or 0) then
    th, tl = s[1], s[2] or 0
  else
    -- Full again (or never charged): the state is dropped, whatever follows.
    save(st, nil, 0)
  end
  local reset = ns_ceil(ns_sub(th, tl, now, 0))
  if cost > p.burst then
    return false, p.burst, gcra_remaining(now, p, th, tl), reset, -1
  end
  local nh, nl = ns_add(th, tl, ns_mul(cost, p.ih, p.il))
  local ah, al = ns_sub_sat(nh, nl, p.th, p.tl)
  if ns_le(ah, al, now, 0) then
    if commit then
      th, tl = nh, nl
      reset = ns_ceil(ns_sub(th, tl, now, 0))
      if tl > 0 then
        save(st, { th, tl }, reset)
      else
        save(st, { th }, reset)
      end
    end
    return true, p.burst, gcra_remaining(now, p, th, tl), reset, -1
  end
  return false, p.burst, gcra_remaining(now, p, th, tl), reset, ns_ceil(ns_sub(ah, al, now, 0))
end

-- Refund: the twin of gcra.rs's `refund`: the TAT goes back by `cost` intervals (at most a full
-- bucket's), and a TAT at or before now is no state. A peek does not save a state it keeps, so
-- the expiry is set here: when the TAT comes.
local function gcra_refund(st, now, p, cost, at)
  local s = st.fields
  if not s then
    return
  end
  local bh, bl = ns_mul(min(cost, p.burst), p.ih, p.il)
  local th, tl = s[1], s[2] or 0
  local xh, xl = ns_add(now, 0, bh, bl)
  if not ns_lt(xh, xl, th, tl) then
    save(st, nil, 0)
    return
  end
  local nh, nl = ns_sub(th, tl, bh, bl)
  local ttl = ns_ceil(ns_sub(nh, nl, now, 0))
  if nl > 0 then
    save(st, { nh, nl }, ttl)
  else
    save(st, { nh }, ttl)
  end
end

-- `r` checks in a row of one key at one instant, as r calls of `gcra` would decide them, with
-- the TAT in a local and the state saved once, at the end: what a hot key's repeats cost is
-- mostly the calls and table writes of each check. Appends each check's three values to
-- vs[m + 1 ..] and returns the new m; or nil, having done nothing, when the interval or the
-- state is not whole microseconds (then `gcra` decides each).
local function gcra_run(st, now, p, cost, commit, r, vs, m)
  local s = st.fields
  if p.il ~= 0 or (s and s[2]) then
    return nil
  end
  local burst, th, ih = p.burst, p.th, p.ih
  local step = cost * ih
  -- The state's TAT (false: none), and the last write of the checks: 1 kept, 0 dropped.
  local cur = s and s[1]
  local last = nil
  for _ = 1, r do
    local tat = now
    if cur and cur > now then
      tat = cur
    else
      cur, last = false, 0
    end
    local retry = -2
    if cost <= burst then
      -- Allowed from allow_at on (gcra_us clamps it at 0, which now, at least 0, passes too).
      local allow_at = tat + step - th
      if allow_at <= now then
        if commit then
          tat = tat + step
          cur, last = tat, 1
        end
        retry = -1
      else
        retry = allow_at - now
      end
    end
    local free = now + th - tat
    if free <= 0 then
      free = 0
    else
      free = free / ih
      free = free - free % 1
    end
    vs[m + 1], vs[m + 2], vs[m + 3] = free, tat - now, retry
    m = m + 3
  end
  if last == 1 then
    -- keep(st, cur - now, cur), inline when it writes into the state's own table, whose
    -- second integer is nil (checked above).
    if s and not journal then
      s[1], st.ttl, st.saved = cur, cur - now, true
    else
      keep(st, cur - now, cur)
    end
  elseif last == 0 then
    save(st, nil, 0)
  end
  return m
end
