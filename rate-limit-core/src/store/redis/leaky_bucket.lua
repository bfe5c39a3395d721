-- Leaky bucket as a meter: the twin of algorithm/leaky_bucket.rs. State "level:at", with the
-- level's nanoseconds after them when there are any ("level:at:ns"); `at` is a tick.

-- An interval of whole microseconds (most quotas) keeps the level whole: the same arithmetic in
-- plain integers. `s` is the state read.
local function leaky_bucket_us(st, now, p, s, cost, commit)
  local level, at = 0, now
  if s then
    if s[2] > now then
      at = s[2]
    end
    level = s[1] - (at - s[2])
    if level < 0 then
      level = 0
    end
  end
  local lag = at - now
  -- Only read when cost <= burst, where cost * interval <= tau is exact.
  local poured = level + cost * p.ih
  local allowed = cost <= p.burst and poured <= p.th
  local retry = -1
  if not allowed and cost <= p.burst then
    retry = poured - p.th + lag
  end
  if allowed and commit then
    level = poured
  end
  local reset = 0
  if level > 0 then
    reset = level + lag
    keep(st, reset, level, at)
  else
    save(st, nil, reset)
  end
  local room = 0
  if level < p.th then
    room = (p.th - level) / p.ih
    room = room - room % 1
  end
  return allowed, p.burst, room, reset, retry
end

local function leaky_bucket(st, now, p, cost, commit)
  local s = st.fields
  if p.il == 0 and not (s and s[3]) then
    return leaky_bucket_us(st, now, p, s, cost, commit)
  end
  local lh, ll, at = 0, 0, now
  if s then
    -- Nothing drains before the state's time; every wait adds the caller's lag behind it.
    at = max(now, s[2])
    lh, ll = ns_sub_sat(s[1], s[3] or 0, at - s[2], 0)
  end
  local lag = at - now
  local allowed, retry = false, -1
  if cost <= p.burst then
    -- cost * interval <= tau: exact.
    local ph, pl = ns_add(lh, ll, ns_mul(cost, p.ih, p.il))
    allowed = ns_le(ph, pl, p.th, p.tl)
    if not allowed then
      retry = ns_ceil(ns_sub(ph, pl, p.th, p.tl)) + lag
    elseif commit then
      lh, ll = ph, pl
    end
  end
  local state = nil
  local reset = 0
  if lh > 0 or ll > 0 then
    if ll > 0 then
      state = { lh, at, ll }
    else
      state = { lh, at }
    end
    reset = ns_ceil(lh, ll) + lag
  end
  save(st, state, reset)
  local room = 0
  if ns_lt(lh, ll, p.th, p.tl) then
    local rh, rl = ns_sub(p.th, p.tl, lh, ll)
    room = ns_div(rh, rl, p.ih, p.il)
  end
  return allowed, p.burst, room, reset, retry
end

-- Refund: the twin of leaky_bucket.rs's `refund`. A peek drains to now (and saves it); then the
-- level goes down by `cost` intervals, not below empty (a cost above the burst empties it). The
-- caller's peek that follows sets the expiry.
local function leaky_bucket_refund(st, now, p, cost, at)
  leaky_bucket(st, now, p, cost, false)
  local s = st.fields
  if not s then
    return
  end
  local lh, ll = ns_sub_sat(s[1], s[3] or 0, ns_mul(min(cost, p.burst), p.ih, p.il))
  if lh == 0 and ll == 0 then
    save(st, nil, 0)
  elseif ll > 0 then
    save(st, { lh, s[2], ll }, 0)
  else
    save(st, { lh, s[2] }, 0)
  end
end

-- `r` checks in a row of one key at one instant, as r calls of `leaky_bucket` would decide
-- them, with the state in locals and saved once, at the end (see `gcra_run`); nil, having done
-- nothing, when the interval or the state is not whole microseconds.
local function leaky_bucket_run(st, now, p, cost, commit, r, vs, m)
  local s = st.fields
  if p.il ~= 0 or (s and s[3]) then
    return nil
  end
  local burst, th, ih = p.burst, p.th, p.ih
  -- The state as the checks leave it: none (has false), or the level and its time.
  local has, lvl, lat = false, 0, 0
  if s then
    has, lvl, lat = true, s[1], s[2]
  end
  local reset = 0
  for _ = 1, r do
    local level, at = 0, now
    if has then
      if lat > now then
        at = lat
      end
      level = lvl - (at - lat)
      if level < 0 then
        level = 0
      end
    end
    local lag = at - now
    local poured = level + cost * ih
    local retry = -1
    if cost <= burst and poured <= th then
      if commit then
        level = poured
      end
    elseif cost <= burst then
      retry = poured - th + lag
      if retry < 0 then
        retry = -2
      end
    else
      retry = -2
    end
    reset = 0
    has = level > 0
    if has then
      reset = level + lag
      lvl, lat = level, at
    end
    local room = 0
    if level < th then
      room = (th - level) / ih
      room = room - room % 1
    end
    vs[m + 1], vs[m + 2], vs[m + 3] = room, reset, retry
    m = m + 3
  end
  if has then
    keep(st, reset, lvl, lat)
  else
    save(st, nil, reset)
  end
  return m
end
