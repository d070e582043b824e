local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- state, fail counter, age of the open period in ms on Redis's clock, version, exists,
-- seq, bumped by every change, so that an older snapshot is told from a newer one, and
-- hold_ms: how long from its start the open period lasts at least (a Retry-After), and
-- seeded: the id of the seeding, if an instance wrote it again after Redis lost it (its
-- window is lost too), else 0
local function snapshot()
  local s = redis.call('HMGET', KEYS[1], 'state', 'fail_counter', 'opened_at', 'version', 'seq', 'hold_ms',
                      'seeded')
  local age = ''
  -- An opened_at that is not a number goes back as it is: the instance names the field.
  if s[3] then age = tonumber(s[3]) and tostring(now_ms() - tonumber(s[3])) or s[3] end
  local exists = tostring(redis.call('EXISTS', KEYS[1]))
  return {s[1] or 'closed', s[2] or '0', age, s[4] or '0', exists, s[5] or '0', s[6] or '0', s[7] or '0'}
end
local function publish()
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('PUBLISH', ARGV[1], table.concat(snapshot(), ','))
end
local function transition(to, open_age_ms)
  redis.call('HSET', KEYS[1], 'state', to)
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('HDEL', KEYS[1], 'seeded', 'hold_ms')
  -- A new state starts a new window (KEYS[4], in the scripts that keep one).
  if KEYS[4] and to ~= 'half-open' then redis.call('DEL', KEYS[4]) end
  if to == 'open' then redis.call('HSET', KEYS[1], 'opened_at', now_ms() - (open_age_ms or 0)) end
  if to == 'closed' then redis.call('HSET', KEYS[1], 'fail_counter', 0) end
  if to ~= 'half-open' then redis.call('DEL', KEYS[2]) end
end
