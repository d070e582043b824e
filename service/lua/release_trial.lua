-- KEYS: circuit hash, trial lease. ARGV: channel, the grant's token.
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]); publish() end
