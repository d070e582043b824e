-- KEYS: circuit hash, trial lease. ARGV: channel, reset timeout ms, lease ms, this grant's
-- token ("owner:n"), owner.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost', unpack(snapshot())} end
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'hold_ms')
if s[1] == 'closed' then return {'closed', unpack(snapshot())} end
local period = math.max(tonumber(ARGV[2]), tonumber(s[3] or '0'))
if s[1] == 'open' and s[2] and now_ms() < tonumber(s[2]) + period then
  return {'open', unpack(snapshot())}
end
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then
  -- The lease's holder may take it again, with a new token, for its next trial when
  -- half-open needs several: a late release of the earlier grant then deletes nothing.
  local holder = redis.call('GET', KEYS[2])
  if not holder or string.sub(holder, 1, #ARGV[5] + 1) ~= ARGV[5] .. ':' then
    return {'busy', unpack(snapshot())}
  end
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
end
if s[1] == 'open' then transition('half-open'); publish() end
return {'granted', unpack(snapshot())}
