-- Fixed window aligned to the epoch: the twin of algorithm/fixed_window.rs. State "start:count".
local function fixed_window(st, now, p, cost, commit)
  local start = now - now % p.period
  local s = st.fields
  local count = 0
  -- A stored window newer than now's (a clock behind the one that wrote it) is the window
  -- counted into, and waited for to its end.
  if s and s[1] >= start then
    start, count = s[1], s[2]
  end
  local stop = start + p.period
  local allowed = count + cost <= p.limit
  local retry = -1
  if not allowed and cost <= p.limit then
    retry = stop - now
  end
  if allowed and commit then
    count = count + cost
  end
  local reset = 0
  if count > 0 then
    reset = stop - now
    keep(st, reset, start, count)
  else
    save(st, nil, reset)
  end
  return allowed, p.limit, p.limit - count, reset, retry
end

-- Refund: the twin of fixed_window.rs's `refund`: `cost` off the count if the charge time `at`
-- falls in the stored window, not below 0; a charge of another window gives nothing back. The
-- caller's peek that follows sets the expiry.
local function fixed_window_refund(st, now, p, cost, at)
  local s = st.fields
  if not s or at - at % p.period ~= s[1] then
    return
  end
  local count = max(s[2] - cost, 0)
  if count == 0 then
    save(st, nil, 0)
  else
    save(st, { s[1], count }, 0)
  end
end

-- `r` checks in a row of one key at one instant, as r calls of `fixed_window` would decide
-- them, with the state in locals and saved once, at the end (see `gcra_run`).
local function fixed_window_run(st, now, p, cost, commit, r, vs, m)
  local s = st.fields
  local period, limit = p.period, p.limit
  local now_start = now - now % period
  -- The state as the checks leave it: none (has false), or the window's start and count.
  local has, sst, scount = false, 0, 0
  if s then
    has, sst, scount = true, s[1], s[2]
  end
  local reset = 0
  for _ = 1, r do
    local start, count = now_start, 0
    if has and sst >= start then
      start, count = sst, scount
    end
    local stop = start + period
    local retry = -1
    if count + cost <= limit then
      if commit then
        count = count + cost
      end
    elseif cost <= limit then
      retry = stop - now
      if retry < 0 then
        retry = -2
      end
    else
      retry = -2
    end
    reset = 0
    has = count > 0
    if has then
      reset = stop - now
      sst, scount = start, count
    end
    vs[m + 1], vs[m + 2], vs[m + 3] = limit - count, reset, retry
    m = m + 3
  end
  if has then
    keep(st, reset, sst, scount)
  else
    save(st, nil, reset)
  end
  return m
end
