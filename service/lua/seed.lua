-- KEYS: circuit hash, trial lease. ARGV: channel, state ('open' or 'closed'), fail counter,
-- age of the open period in ms, the version and seq this instance had seen, '1' to
-- replace a record that could not be read, and the open period's Retry-After hold in ms
-- (a hold must survive the record: without it the fleet's trial comes at the reset timeout),
-- and this seeding's id. Writes this instance's view where Redis lost the circuit; where
-- another instance seeded it first, an open view still wins over a seeded closed one. The
-- id stays in `seeded` until the next transition: each instance adds its recent calls to
-- the window once per seeding, and a record lost twice at one version is two seedings.
if ARGV[7] == '1' then redis.call('DEL', KEYS[1]) end
local s = redis.call('HMGET', KEYS[1], 'state', 'version', 'seeded')
local seen = tonumber(ARGV[5])
if s[2] and tonumber(s[2]) >= seen then
  if ARGV[2] == 'open' and s[1] == 'closed' and s[3] then
    transition('open', tonumber(ARGV[4])); redis.call('HSET', KEYS[1], 'seeded', ARGV[9])
    if tonumber(ARGV[8]) > 0 then redis.call('HSET', KEYS[1], 'hold_ms', ARGV[8]) end
    publish()
  end
  return {'found', unpack(snapshot())}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'fail_counter', ARGV[3], 'version', seen, 'seeded', ARGV[9],
           'seq', ARGV[6])
if ARGV[2] == 'open' then
  redis.call('HSET', KEYS[1], 'opened_at', now_ms() - tonumber(ARGV[4]))
  if tonumber(ARGV[8]) > 0 then redis.call('HSET', KEYS[1], 'hold_ms', ARGV[8]) end
end
redis.call('DEL', KEYS[2])
publish()
return {'seeded', unpack(snapshot())}
