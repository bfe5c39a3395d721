-- Token bucket: the twin of algorithm/token_bucket.rs. State "tokens:last", with last's
-- nanoseconds after it when there are any ("tokens:last:ns"): `last` advances by whole emission
-- intervals, which need not be whole microseconds.

-- An interval of whole microseconds (most quotas) keeps every time whole: the same arithmetic
-- in plain integers, with no pairs to carry. `s` is the state read.
local function token_bucket_us(st, now, p, s, cost, commit)
  local interval = p.ih
  local tokens, last = p.burst, now
  if s then
    local add = 0
    if now > s[2] then
      add = (now - s[2]) / interval
      add = add - add % 1
    end
    tokens = s[1] + add
    if tokens < p.burst then
      last = s[2] + add * interval
    else
      tokens = p.burst
    end
  end
  local allowed = cost <= tokens
  local retry = -1
  if not allowed and cost <= p.burst then
    retry = last + (cost - tokens) * interval - now
  end
  if allowed and commit then
    tokens = tokens - cost
  end
  local reset = last + (p.burst - tokens) * interval - now
  if reset < 0 then
    reset = 0
  end
  if tokens < p.burst then
    keep(st, reset, tokens, last)
  else
    save(st, nil, reset)
  end
  return allowed, p.burst, tokens, reset, retry
end

local function token_bucket(st, now, p, cost, commit)
  local s = st.fields
  if p.il == 0 and not (s and s[3]) then
    return token_bucket_us(st, now, p, s, cost, commit)
  end
  local tokens, lh, ll = p.burst, now, 0
  if s then
    local sh, sl = s[2], s[3] or 0
    local add = 0
    if ns_lt(sh, sl, now, 0) then
      local dh, dl = ns_sub(now, 0, sh, sl)
      if ns_lt(dh, dl, p.th, p.tl) then
        add = ns_div(dh, dl, p.ih, p.il)
      else
        -- A full bucket's refill or more.
        add = p.burst
      end
    end
    tokens = min(s[1] + add, p.burst)
    if tokens < p.burst then
      lh, ll = ns_add(sh, sl, ns_mul(add, p.ih, p.il))
    end
  end
  local allowed = cost <= tokens
  local retry = -1
  if not allowed and cost <= p.burst then
    local wh, wl = ns_add(lh, ll, ns_mul(cost - tokens, p.ih, p.il))
    retry = ns_ceil(ns_sub(wh, wl, now, 0))
  end
  if allowed and commit then
    tokens = tokens - cost
  end
  local fh, fl = ns_add(lh, ll, ns_mul(p.burst - tokens, p.ih, p.il))
  local reset = ns_ceil(ns_sub_sat(fh, fl, now, 0))
  local state = nil
  if tokens < p.burst then
    if ll > 0 then
      state = { tokens, lh, ll }
    else
      state = { tokens, lh }
    end
  end
  save(st, state, reset)
  return allowed, p.burst, tokens, reset, retry
end

-- Refund: the twin of token_bucket.rs's `refund`. A peek counts the refill to now (and saves it);
-- then `cost` tokens come back, up to the burst. The caller's peek that follows sets the expiry.
local function token_bucket_refund(st, now, p, cost, at)
  token_bucket(st, now, p, cost, false)
  local s = st.fields
  if not s then
    return
  end
  local tokens = s[1] + min(cost, p.burst)
  if tokens >= p.burst then
    save(st, nil, 0)
  elseif s[3] then
    save(st, { tokens, s[2], s[3] }, 0)
  else
    save(st, { tokens, s[2] }, 0)
  end
end

-- `r` checks in a row of one key at one instant, as r calls of `token_bucket` would decide
-- them, with the state in locals and saved once, at the end (see `gcra_run`); nil, having done
-- nothing, when the interval or the state is not whole microseconds.
local function token_bucket_run(st, now, p, cost, commit, r, vs, m)
  local s = st.fields
  if p.il ~= 0 or (s and s[3]) then
    return nil
  end
  local interval, burst = p.ih, p.burst
  -- The state as the checks leave it: none (has false), or tokens and last.
  local has, tok, lst = false, 0, 0
  if s then
    has, tok, lst = true, s[1], s[2]
  end
  local reset = 0
  for _ = 1, r do
    local tokens, last = burst, now
    if has then
      local add = 0
      if now > lst then
        add = (now - lst) / interval
        add = add - add % 1
      end
      tokens = tok + add
      if tokens < burst then
        last = lst + add * interval
      else
        tokens = burst
      end
    end
    local retry = -1
    if cost <= tokens then
      if commit then
        tokens = tokens - cost
      end
    elseif cost <= burst then
      retry = last + (cost - tokens) * interval - now
      if retry < 0 then
        retry = -2
      end
    else
      retry = -2
    end
    reset = last + (burst - tokens) * interval - now
    if reset < 0 then
      reset = 0
    end
    has = tokens < burst
    tok, lst = tokens, last
    vs[m + 1], vs[m + 2], vs[m + 3] = tokens, reset, retry
    m = m + 3
  end
  if has then
    keep(st, reset, tok, lst)
  else
    save(st, nil, reset)
  end
  return m
end
