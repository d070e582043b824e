-- KEYS: circuit hash, trial lease, this writer's last batch, the fleet's call window.
-- ARGV: channel, fail_max, the batch's id, then entries of three: op, the version it is
-- based on, a count. An entry based on another version is stale and refused; a forced
-- one (and a Retry-After's hold) applies whatever the version. A batch sent again after
-- a lost reply is applied once. A `window` entry's count is "calls,failures,slow,
-- window ms,min calls,failure rate,slow call rate": its calls join the fleet's buckets
-- (ten per window, on Redis's clock) and the rates over them decide the trip. The reply
-- is the snapshot, then the window's calls, failures and slow calls if it has one. A
-- `recount` entry is a `window` entry that never trips: an instance's calls added again
-- after Redis lost the window arrive one instance at a time, and the first one's share
-- alone is no fleet's window (the next call's `window` entry decides on all of them).
-- The fleet's window has one width, the first writer's (kept in the record): an instance
-- with another CIRCUIT_WINDOW adds to the same buckets instead of deleting them as too old.
local function window_width(window_ms)
  local width = tonumber(redis.call('HGET', KEYS[1], 'window_ms'))
  if not width then
    width = window_ms
    redis.call('HSET', KEYS[1], 'window_ms', width)
  end
  return width / 10
end
local function window_totals(width)
  local oldest = math.floor(now_ms() / width) - 9
  local totals = {0, 0, 0}
  local fields = redis.call('HGETALL', KEYS[4])
  for j = 1, #fields, 2 do
    local bucket, kind = string.match(fields[j], '^(%-?%d+):(%d)$')
    if tonumber(bucket) < oldest then
      redis.call('HDEL', KEYS[4], fields[j])
    else
      totals[tonumber(kind)] = totals[tonumber(kind)] + tonumber(fields[j + 1])
    end
  end
  return totals
end
if redis.call('GET', KEYS[3]) == ARGV[3] then return snapshot() end
redis.call('SET', KEYS[3], ARGV[3], 'EX', 3600)
local fail_max = tonumber(ARGV[2])
local changed = false
local window = nil
for i = 4, #ARGV, 3 do
  local op, base, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local s = redis.call('HMGET', KEYS[1], 'state', 'version', 'fail_counter')
  local state, version = s[1] or 'closed', s[2] or '0'
  local current = (op == 'force-open' or op == 'force-close' or op == 'hold') or (s[2] and version == base)
  if (op == 'window' or op == 'recount') and current and state == 'closed' then
    local v = {}
    for x in string.gmatch(ARGV[i + 2], '[^,]+') do table.insert(v, tonumber(x)) end
    local width = window_width(v[4])
    local bucket = math.floor(now_ms() / width)
    for kind = 1, 3 do
      if v[kind] > 0 then redis.call('HINCRBY', KEYS[4], bucket .. ':' .. kind, v[kind]) end
    end
    redis.call('PEXPIRE', KEYS[4], math.ceil(width * 20))
    window = window_totals(width)
    local calls = window[1]
    if op == 'window' and calls >= v[5] and (window[2] >= v[6] * calls or window[3] >= v[7] * calls) then
      transition('open'); changed = true
      window = {0, 0, 0}
    end
  elseif op == 'hold' then
    -- A Retry-After: open if not open, and no trial for n ms from now (the instance sends
    -- what is left of it when the batch leaves, so a hold heard during an outage counts
    -- from when it was heard).
    if state ~= 'open' then transition('open') end
    local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
    local held = tonumber(redis.call('HGET', KEYS[1], 'hold_ms') or '0')
    redis.call('HSET', KEYS[1], 'hold_ms', math.max(held, now_ms() - opened + n))
    changed = true
  elseif current then
    if op == 'failures' or op == 'reset-failures' then
      if op == 'reset-failures' then redis.call('HSET', KEYS[1], 'fail_counter', 0) end
      local count = redis.call('HINCRBY', KEYS[1], 'fail_counter', n)
      if state == 'closed' and count >= fail_max then transition('open') end
      changed = true
    elseif op == 'trip' then
      -- The rate policy's open, decided on an instance's own window while Redis was out of
      -- reach (connected, the fleet's window decides here): it wins, as an open in a row
      -- of failures does under the consecutive policy.
      if state ~= 'open' then transition('open'); changed = true end
    elseif op == 'open' or op == 'force-open' then
      -- A closed circuit opens on the fleet's count, not on one instance's view of it.
      -- An open based on this very version of an open circuit is a trial that instance
      -- made alone while Redis was out of reach, and that failed: its open wins, as a
      -- new period from now, or the fleet would let another trial through at once.
      if state == 'half-open' or op == 'force-open' and state ~= 'open'
         or state == 'closed' and tonumber(s[3] or '0') >= fail_max
         or op == 'open' and state == 'open' then
        transition('open'); changed = true
      end
    elseif op == 'close' or op == 'force-close' then
      -- A record seeded after a loss is open from then on: a trial's success that
      -- was on its way before the loss does not close it (a new trial will).
      local reseeded = op == 'close' and redis.call('HEXISTS', KEYS[1], 'seeded') == 1
      if state ~= 'closed' and not reseeded then
        transition('closed'); changed = true
      elseif op == 'force-close' then
        -- Already closed: no transition, but a new generation with a clean count,
        -- so that calls admitted before the operator's close count for nothing.
        redis.call('HSET', KEYS[1], 'fail_counter', 0)
        redis.call('HINCRBY', KEYS[1], 'version', 1)
        redis.call('DEL', KEYS[4])  -- and a window started afresh, as a close starts one
        changed = true
      end
    end
  end
end
if changed then publish() end
local reply = snapshot()
if window then
  for kind = 1, 3 do table.insert(reply, window[kind]) end
end
return reply
