-- KEYS: circuit hash. ARGV: channel, fail_max, reset timeout ms, policy, window ms ('' for
-- the consecutive policy). Creates the circuit if there is none; returns its snapshot and
-- the settings its first writer gave it: fail_max, reset timeout ms, policy, window ms.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'fail_counter', 0, 'version', 1, 'seq', 0)
end
redis.call('HSETNX', KEYS[1], 'fail_max', ARGV[2])
redis.call('HSETNX', KEYS[1], 'reset_timeout_ms', ARGV[3])
redis.call('HSETNX', KEYS[1], 'policy', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSETNX', KEYS[1], 'window_ms', ARGV[5]) end
local settings = redis.call('HMGET', KEYS[1], 'fail_max', 'reset_timeout_ms', 'policy', 'window_ms')
local reply = snapshot()
for j = 1, 4 do table.insert(reply, settings[j] or '') end
return reply
