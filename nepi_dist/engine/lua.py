"""The Lua scripts behind the store: each one is one atomic step on one run's keys.

All keys a script touches share the run's hash tag, so each script stays in one
Redis Cluster slot.  States are NEPI's integers (READY 3, FAILED 7, RELEASED 8).

Every script is idempotent under a replay: a client whose connection broke
after Redis ran a script, before the reply came, sends it again with the same
arguments (:mod:`nepi_dist.engine.connection`), and the second run changes nothing
more.  A transition and a claim carry a token for that; the others are
naturally so (a set, a compare-and-set, a member already added).
"""

_TIME = """
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
"""

# KEYS: rm, wait, run, events, outbox, pending, alarm, timers
# ARGV: new state, allowed from-states ("" = any), guid, key prefix, ETA horizon (s),
#       states passed through on the way, in order ("" = none; each stamped and announced),
#       the transition's token (12 characters, unique per call: a replay of one of the RM's last 8
#       transitions is a no-op, even after later ones)
# Returns {changed, previous state, aid, payload, due, aid, payload, due, ...}: the actions
# woken, due at the transition's time plus the delay ("d") their condition was parked with;
# one due beyond the horizon goes to the timers instead of being returned.
TRANSITION = _TIME + """
local cur = tonumber(redis.call('HGET', KEYS[1], 'state'))
if cur == nil then return {-1} end
local new = tonumber(ARGV[1])
if cur == 8 or cur == new then return {0, cur} end
-- the tokens of its last transitions: a call sent again (its reply was lost) finds its own
local applied = redis.call('HGET', KEYS[1], 'tx') or ''
if string.find(applied, ARGV[7], 1, true) then return {0, cur} end
if ARGV[2] ~= '' then
  local ok = false
  for s in string.gmatch(ARGV[2], '[^,]+') do
    if tonumber(s) == cur then ok = true end
  end
  if not ok then return {0, cur} end
end
-- Nothing starts once the run aborted or is being released (a start claimed just before).
if new == 4 and (tonumber(redis.call('HGET', KEYS[3], 'fl') or '1') ~= 1
                 or redis.call('HEXISTS', KEYS[3], 'drop') == 1) then
  return {0, cur}
end
local ts = now()
for s in string.gmatch(ARGV[6] .. ',' .. new, '[^,]+') do
  redis.call('HSET', KEYS[1], 't' .. s, ts)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000000, '*', 'g', ARGV[3], 's', s, 't', ts)
end
redis.call('HSET', KEYS[1], 'state', new, 'tx', string.sub(ARGV[7] .. ' ' .. applied, 1, 103))
local out = {1, cur}
local function emit(payload, delay)
  local aid = 's' .. redis.call('HINCRBY', KEYS[3], 'seq', 1)
  local due = ts
  if delay > 0 then due = string.format('%.6f', tonumber(ts) + delay) end
  if delay > tonumber(ARGV[5]) then
    redis.call('ZADD', KEYS[8], due, '{"aid":"' .. aid .. '","p":' .. payload .. '}')
    return
  end
  redis.call('HSET', KEYS[5], aid, payload)
  redis.call('ZADD', KEYS[6], due, aid)
  table.insert(out, aid)
  table.insert(out, payload)
  table.insert(out, due)
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', new)) do
  emit(member, tonumber(cjson.decode(member)['d']) or 0)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', new)
local gid = redis.call('HGET', KEYS[1], 'grp')
if gid and cur < 3 and new >= 3 then
  local left = redis.call('HINCRBY', ARGV[4] .. ':grp:' .. gid, 'pending', -1)
  if left <= 0 then
    local sk = ARGV[4] .. ':grpstart:' .. gid
    for _, g in ipairs(redis.call('SMEMBERS', sk)) do
      emit('{"g":' .. g .. ',"m":"start_with_conditions"}', 0)  -- g: SMEMBERS' exact text
    end
    redis.call('DEL', sk)
  end
end
if new == 7 and redis.call('HGET', KEYS[1], 'a:critical') ~= 'false' then
  if tonumber(redis.call('HGET', KEYS[3], 'fl') or '1') == 1 then
    redis.call('HSET', KEYS[3], 'fl', 2)
  end
  redis.call('RPUSH', KEYS[7], ARGV[3])
end
return out
"""

# Where one RM of a condition's group stands against the state the condition needs:
# 'ok' with the time it reached that state (0 for a FAILED non-critical RM, which never
# holds a condition back), 'unmet', 'failed' (critical and FAILED) or 'unknown'.
_JUDGE = """
local function judge(rk, need)
  local f = redis.call('HMGET', rk, 'state', 'a:critical', 't' .. need)
  local s = tonumber(f[1])
  if s == nil then return 'unknown', 0 end
  if s == 7 and need < 7 then
    if f[2] ~= 'false' then return 'failed', 0 end
    return 'ok', 0
  end
  if s < need then return 'unmet', 0 end
  return 'ok', tonumber(f[3] or '0')
end
"""

# KEYS: rm1, wait1, rm2, wait2, ...   ARGV: needed state, payload to park ("" = don't)
# Returns {'ok', latest time the group reached the state, now} or {outcome, 1-based index}.
CHECK = _TIME + _JUDGE + """
local need = tonumber(ARGV[1])
local last = 0
for i = 1, #KEYS, 2 do
  local verdict, t = judge(KEYS[i], need)
  if verdict == 'unmet' then
    if ARGV[2] ~= '' then redis.call('ZADD', KEYS[i + 1], need, ARGV[2]) end
    return {'parked', (i + 1) / 2}
  end
  if verdict ~= 'ok' then return {verdict, (i + 1) / 2} end
  if t > last then last = t end
end
return {'ok', string.format('%.6f', last), now()}
"""

# KEYS: rm   ARGV: key prefix, action (NEPI's integer)
# Read-only: what an action's gate needs in one round trip.  Returns {now ('' when the RM
# has no conditions), the RM's state, its conditions (the JSON of its 'cond' field), then per
# condition of the action, in order: 'ok' or not, and the latest time its group reached the
# needed state}.
GATE = _TIME + _JUDGE + """
local f = redis.call('HMGET', KEYS[1], 'state', 'cond')
local out = {'', f[1] or '', f[2] or ''}
if not f[2] then return out end
out[1] = now()
for _, c in ipairs(cjson.decode(f[2])[ARGV[2]] or {}) do
  local need, verdict, last = tonumber(c[2]), 'ok', 0
  for _, g in ipairs(c[1]) do
    local v, t = judge(ARGV[1] .. ':rm:' .. string.format('%d', g), need)
    if v ~= 'ok' then verdict = v break end
    if t > last then last = t end
  end
  table.insert(out, verdict)
  table.insert(out, string.format('%.6f', last))
end
return out
"""

# KEYS: run, pending, running, sent   ARGV: action id, claim token (<worker id>/<nonce>), 1 if a release
# Returns {'run', ''} (claimed now, or by this very token before: a replay), {'held', holder's
# token}, or {'skip', 'aborted' | 'done'}.  A claim ends the action's stay in 'sent': its
# message arrived, nothing need re-send it.
CLAIM = """
local fl = tonumber(redis.call('HGET', KEYS[1], 'fl') or '1')
if ARGV[3] ~= '1' and (fl ~= 1 or redis.call('HEXISTS', KEYS[1], 'drop') == 1) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  return {'skip', 'aborted'}
end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[1])
  return {'run', ''}
end
local holder = redis.call('HGET', KEYS[3], ARGV[1])
if holder == ARGV[2] then return {'run', ''} end
if holder then return {'held', holder} end
return {'skip', 'done'}
"""

# KEYS: running   ARGV: action id, old holder's token, new holder's token
TAKEOVER = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder == ARGV[3] then return 1 end
if holder == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""

# KEYS: running, task   ARGV: action id, claim token[, status, result (JSON): a tracked action]
FINISH = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
if ARGV[3] then redis.call('HSET', KEYS[2], 's', ARGV[3], 'r', ARGV[4]) end
return 1
"""

# KEYS: running   ARGV: token that claims no longer run ('-'), then pairs of action id, token
# A worker gives up claims whose action a Redis error cut short: each becomes held by '-', a
# holder with no heartbeat, so the next delivery takes it over and resumes the action.
# Returns how many it gave up (a claim another worker took over meanwhile is left alone).
UNCLAIM = """
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
    n = n + 1
  end
end
return n
"""

# KEYS: group, groupstart   ARGV: gid, wait_all_ready, key prefix, guids...
# A member is counted (not yet READY) only when it joins; a replay adds nothing.
JOIN_GROUP = """
local added = 0
for i = 4, #ARGV do
  local rk = ARGV[3] .. ':rm:' .. ARGV[i]
  local f = redis.call('HMGET', rk, 'state', 'grp')
  redis.call('HSET', rk, 'grp', ARGV[1])
  -- counted once: a guid given twice, or a replay, finds itself in the group already
  if f[2] ~= ARGV[1] then
    if tonumber(f[1]) < 3 then added = added + 1 end
    if ARGV[2] == '1' then redis.call('SADD', KEYS[2], ARGV[i]) end
  end
end
local left = redis.call('HINCRBY', KEYS[1], 'pending', added)
if left <= 0 and ARGV[2] == '1' then
  local ready = redis.call('SMEMBERS', KEYS[2])
  redis.call('DEL', KEYS[2])
  return ready
end
return {}
"""

# KEYS: run, pending, timers, outbox, sent   ARGV: 1 to drop only once for an abort, else 0
# Forget every pending action, timer, outbox and sent entry; return the ids of the pending ones.
# Once for an abort: the first caller (the controller's failure manager or a keeper) drops,
# later ones find the run's 'revoked' mark and leave alone what was sent since (a release).
# The drop a release of the whole run does first sets the mark too: an abort noticed after
# it must not drop the release's own actions.
DROP = """
if ARGV[1] == '1' then
  if redis.call('HSETNX', KEYS[1], 'revoked', 1) == 0 then return {} end
else
  redis.call('HSET', KEYS[1], 'revoked', 1)
end
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return ids
"""

# KEYS: outbox, pending, sent, publishing   ARGV: the publisher's lease (s), then action ids
# The actions were published: each leaves the outbox, and its payload stays in 'sent' until
# its claim (unless it was claimed already), so that a message lost on its way (a consumer
# that died between popping it and recording it as unacknowledged) can be sent again.
SENT = """
for i = 2, #ARGV do
  local p = redis.call('HGET', KEYS[1], ARGV[i])
  if p then
    if redis.call('ZSCORE', KEYS[2], ARGV[i]) then redis.call('HSET', KEYS[3], ARGV[i], p) end
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
redis.call('SET', KEYS[4], 1, 'EX', ARGV[1])
return 1
"""

# KEYS: pending, sent   ARGV: cut-off (Redis clock), now, most to return
# Actions published, due before the cut-off and still unclaimed, whose payload 'sent' holds:
# their message was lost.  Each is due again now (so that it is re-sent once per cut-off
# period); returns action id, payload pairs.
LOST = """
local out = {}
for _, aid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))) do
  local p = redis.call('HGET', KEYS[2], aid)
  if p then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], aid)
    table.insert(out, aid)
    table.insert(out, p)
  end
end
return out
"""

# KEYS: lease   ARGV: holder id, milliseconds
# Take the lease when free, renew it when ours; return 1 when we hold it.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: timers, outbox, pending   ARGV: horizon end (Redis clock)
POP_TIMERS = """
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES')) do
  table.insert(out, m)
end
for i = 1, #out, 2 do
  local item = cjson.decode(out[i])
  redis.call('HSET', KEYS[2], item.aid, cjson.encode(item.p))
  redis.call('ZADD', KEYS[3], out[i + 1], item.aid)
  redis.call('ZREM', KEYS[1], out[i])
end
return out
"""

# KEYS: run, guids   ARGV: rm key prefix, guid ("" = next free), rtype, the call's token
# Returns the guid, -1 if the guid asked for is taken, -2 if it is outside [1, 2**53) or the
# next free one would be: Lua numbers are doubles, exact only below 2**53.  A guid is written
# with string.format('%d'): Lua's own number-to-text ('%.14g') would turn 100000000000001
# into '1e+14' in the key (the member, converted by Redis with 17 digits, would still be exact).
REGISTER = _TIME + """
-- the run's last registration: a call sent again (its reply was lost) gets the guid it made
local last_reg = redis.call('HGET', KEYS[1], 'reg')
if last_reg and string.sub(last_reg, 1, #ARGV[4] + 1) == ARGV[4] .. ':' then
  return tonumber(string.sub(last_reg, #ARGV[4] + 2))
end
local guid = ARGV[2]
if guid == '' then
  local last = redis.call('ZREVRANGE', KEYS[2], 0, 0)
  local n = 1
  if #last > 0 then n = tonumber(last[1]) + 1 end
  if n >= 9007199254740992 then return -2 end
  guid = string.format('%d', n)
else
  local n = tonumber(guid)
  if n == nil or n < 1 or n >= 9007199254740992 or string.format('%d', n) ~= guid then return -2 end
  if redis.call('ZSCORE', KEYS[2], guid) then return -1 end
end
redis.call('ZADD', KEYS[2], guid, guid)
redis.call('HSET', ARGV[1] .. guid, 'rtype', ARGV[3], 'state', 0, 't0', now())
redis.call('HSET', KEYS[1], 'reg', ARGV[4] .. ':' .. guid)
return tonumber(guid)
"""
