-- Sliding window counter: the twin of algorithm/sliding_window.rs. State "start:cur:prev".
--
-- The Rust test `prev * (P - e) + (cur + cost) * P <= limit * P` is rewritten as
-- `cur + cost <= limit and prev * (P - e) <= (limit - cur - cost) * P`, the same test whose
-- products never exceed `limit * P`: the store checks that `limit * P < 2^53`.
local function sliding_window(st, now, p, cost, commit)
  local s = st.fields
  -- A stored window newer than now (a clock behind the one that wrote it) is counted into as
  -- at its start; every wait adds the lag on the caller's clock.
  local lag = 0
  if s and s[1] > now then
    lag = s[1] - now
    now = s[1]
  end
  local start = now - now % p.period
  local cur, prev = 0, 0
  if s then
    if s[1] == start then
      cur, prev = s[2], s[3]
    elseif s[1] + p.period == start then
      prev = s[2]
    end
  end
  local elapsed = now - start
  local carried = prev * (p.period - elapsed)
  local allowed = cost <= p.limit and cur + cost <= p.limit
    and carried <= (p.limit - cur - cost) * p.period
  local retry = -1
  if not allowed and cost <= p.limit then
    if cur + cost <= p.limit then
      -- Later in this window, once prev's weight has dropped far enough.
      local k = floor((p.limit - cur - cost) * p.period / prev)
      retry = p.period - k - elapsed + lag
    else
      -- In the next window, where cur becomes the weighted previous count.
      local k = floor((p.limit - cost) * p.period / cur)
      retry = 2 * p.period - k - elapsed + lag
    end
  end
  local stop = start + p.period
  if allowed and commit then
    cur = cur + cost
  end
  -- ceil(carried / period), without a call (a C function call costs Redis hundreds of
  -- instructions): carried and the period are whole.
  local weighted_prev = carried / p.period
  local whole = weighted_prev - weighted_prev % 1
  if whole < weighted_prev then
    whole = whole + 1
  end
  weighted_prev = whole
  local reset = 0
  if cur > 0 then
    reset = stop + p.period - now + lag
  elseif prev > 0 then
    reset = stop - now + lag
  end
  if cur > 0 or prev > 0 then
    keep(st, reset, start, cur, prev)
  else
    save(st, nil, reset)
  end
  local left = p.limit - (weighted_prev + cur)
  if left < 0 then
    left = 0
  end
  return allowed, p.limit, left, reset, retry
end

-- Refund: the twin of sliding_window.rs's `refund`: `cost` off the count of the window the charge
-- time `at` falls in, the stored one or the one before it, not below 0; an older window gives
-- nothing back. The caller's peek that follows sets the expiry.
local function sliding_window_refund(st, now, p, cost, at)
  local s = st.fields
  if not s then
    return
  end
  local charged = at - at % p.period
  local cur, prev = s[2], s[3]
  if charged == s[1] then
    cur = max(cur - cost, 0)
  elseif charged + p.period == s[1] then
    prev = max(prev - cost, 0)
  else
    return
  end
  if cur == 0 and prev == 0 then
    save(st, nil, 0)
  else
    save(st, { s[1], cur, prev }, 0)
  end
end

-- `r` checks in a row of one key at one instant, as r calls of `sliding_window` would decide
-- them, with the state in locals and saved once, at the end (see `gcra_run`).
local function sliding_window_run(st, now0, p, cost, commit, r, vs, m)
  local s = st.fields
  local period, limit = p.period, p.limit
  -- The state as the checks leave it: none (has false), or start, cur and prev.
  local has, sst, scur, sprev = false, 0, 0, 0
  if s then
    has, sst, scur, sprev = true, s[1], s[2], s[3]
  end
  local reset = 0
  for _ = 1, r do
    local now, lag = now0, 0
    if has and sst > now then
      lag = sst - now
      now = sst
    end
    local start = now - now % period
    local cur, prev = 0, 0
    if has then
      if sst == start then
        cur, prev = scur, sprev
      elseif sst + period == start then
        prev = scur
      end
    end
    local elapsed = now - start
    local carried = prev * (period - elapsed)
    local retry = -1
    if cost <= limit and cur + cost <= limit and carried <= (limit - cur - cost) * period then
      if commit then
        cur = cur + cost
      end
    elseif cost <= limit then
      if cur + cost <= limit then
        local k = floor((limit - cur - cost) * period / prev)
        retry = period - k - elapsed + lag
      else
        local k = floor((limit - cost) * period / cur)
        retry = 2 * period - k - elapsed + lag
      end
      if retry < 0 then
        retry = -2
      end
    else
      retry = -2
    end
    local stop = start + period
    local weighted_prev = carried / period
    local whole = weighted_prev - weighted_prev % 1
    if whole < weighted_prev then
      whole = whole + 1
    end
    reset = 0
    if cur > 0 then
      reset = stop + period - now + lag
    elseif prev > 0 then
      reset = stop - now + lag
    end
    has = cur > 0 or prev > 0
    if has then
      sst, scur, sprev = start, cur, prev
    end
    local left = limit - (whole + cur)
    if left < 0 then
      left = 0
    end
    vs[m + 1], vs[m + 2], vs[m + 3] = left, reset, retry
    m = m + 3
  end
  if has then
    keep(st, reset, sst, scur, sprev)
  else
    save(st, nil, reset)
  end
  return m
end
