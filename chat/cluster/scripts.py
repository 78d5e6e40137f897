"""The Lua scripts of the Redis backend. Each runs atomically in Redis.

Invariants the scripts keep together:
- a room's `meta.last` and its stream advance in the same script, so ids are
  consecutive cluster-wide and the order of PUBLISH is id order;
- the cid index holds exactly the retained messages (trimmed with the stream);
- a room's epoch changes only when the service's generation changed (Redis restarted
  with persistence that may have lost writes) or its meta is gone (data lost);
- a session is ended only by a caller that names its current node and connection, or
  by the reaper once its node's lease is gone; either removes it from the node's set,
  so it is ended exactly once.

Nicks are letters, digits, '_', '-' and '.', and room names [a-z0-9_-]: neither needs
JSON escaping, so the scripts may splice them into presence frames.
"""

from __future__ import annotations

from typing import Final

# The epoch of a room, rotated when its generation is stale (see the module docstring).
# KEYS: meta, generation; the fresh epoch is the caller's random value.
_EPOCH: Final = """
local function epoch_of(meta, gen_key, fresh)
  local gen = redis.call('GET', gen_key) or '0'
  local cur = redis.call('HMGET', meta, 'epoch', 'gen')
  if cur[1] and cur[2] == gen then return cur[1] end
  redis.call('HSET', meta, 'epoch', fresh, 'gen', gen)
  return fresh
end
"""

_END_SESSION: Final = """
local function end_session(P, sid, nick, key, node, reason)
  local skey = P .. ':session:' .. sid
  local rooms = redis.call('SMEMBERS', skey .. ':rooms')
  table.sort(rooms)
  for _, room in ipairs(rooms) do
    local chan = P .. ':{' .. room .. '}'
    redis.call('HDEL', chan .. ':members', sid)
    redis.call('PUBLISH', chan, 'P ' .. sid .. ' {"type":"presence","room":"' .. room ..
      '","event":"leave","nick":"' .. nick .. '","reason":"' .. reason .. '"}')
  end
  redis.call('DEL', skey, skey .. ':rooms')
  local nick_key = P .. ':nick:' .. key
  if redis.call('GET', nick_key) == sid then redis.call('DEL', nick_key) end
  redis.call('SREM', P .. ':node:' .. node .. ':sessions', sid)
end
"""

# The says of one round (chat.history.redis), grouped by room; each room's in queue order.
# The shebang makes Redis refuse the whole script up front when it is out of memory or
# read-only, instead of failing at its first write with part of the round stored.
# KEYS: generation, rooms, then per room of the round: meta, log, cids
# ARGV: retain, fresh epoch, number of rooms R, then per room: channel, name, says in it,
#       then per say (rooms in the same order): nick key, cid ('' for none), frame head,
#       frame tail
# Returns per say, in argument order: id, and '' when stored now or, for a cid already
# stored, the original's frame (its id is the original's).
# Publishes per room one `N EPOCH FIRST FRAME\nFRAME...`: the frames stored now, with
# consecutive ids from FIRST (a JSON frame never holds a raw newline).
SAY: Final = "#!lua\n" + _EPOCH + """
local retain = tonumber(ARGV[1])
local fresh = ARGV[2]
local rooms = tonumber(ARGV[3])
local out = {}
local a = 4 + rooms * 3
for r = 0, rooms - 1 do
  local meta, log, cids = KEYS[3 + r * 3], KEYS[4 + r * 3], KEYS[5 + r * 3]
  local channel, name = ARGV[4 + r * 3], ARGV[5 + r * 3]
  local says = tonumber(ARGV[6 + r * 3])
  local epoch = epoch_of(meta, KEYS[1], fresh)
  local first = false
  local frames = {}
  for _ = 1, says do
    local key, cid = ARGV[a], ARGV[a + 1]
    local field = false
    local original = false
    if cid ~= '' then
      field = key .. '\\0' .. cid
      local old = redis.call('HGET', cids, field)
      if old then
        local entry = redis.call('XRANGE', log, old .. '-0', old .. '-0')
        if entry[1] then original = {tonumber(old), entry[1][2][2]} end
      end
    end
    if original then
      out[#out + 1] = original[1]
      out[#out + 1] = original[2]
    else
      local id = redis.call('HINCRBY', meta, 'last', 1)
      local frame = ARGV[a + 2] .. id .. ARGV[a + 3]
      redis.call('XADD', log, id .. '-0', 'f', frame, 'k', key, 'c', cid)
      if field then redis.call('HSET', cids, field, id) end
      if id == 1 then redis.call('ZADD', KEYS[2], 0, name) end
      if not first then first = id end
      frames[#frames + 1] = frame
      out[#out + 1] = id
      out[#out + 1] = ''
    end
    a = a + 4
  end
  local n = redis.call('XLEN', log)
  if n > retain then
    for _, entry in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', n - retain)) do
      local f = entry[2]
      if f[6] ~= '' then redis.call('HDEL', cids, f[4] .. '\\0' .. f[6]) end
    end
    redis.call('XTRIM', log, 'MAXLEN', retain)
  end
  if first then
    local batch = table.concat(frames, '\\n')
    redis.call('PUBLISH', channel, 'N ' .. epoch .. ' ' .. first .. ' ' .. batch)
  end
end
return out
"""

# KEYS: meta, log, generation. ARGV: fresh epoch.
# Returns {epoch, newest id ever given, oldest id stored (newest + 1 when none)}.
POSITION: Final = _EPOCH + """
local epoch = epoch_of(KEYS[1], KEYS[3], ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
local first = last + 1
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if oldest[1] then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
return {epoch, last, first}
"""

# Run on every new connection to Redis, before anything else is sent on it. A new
# run_id means Redis restarted; with persistence weaker than appendfsync always it may
# have lost the newest writes, so the generation moves on and each room takes a new
# epoch at its next use (ids may then repeat, but never within one epoch).
# KEYS: boot, generation. ARGV: run_id, '1' when persistence is weak.
# Returns 1 when this run_id is new to the service.
BOOT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then redis.call('INCR', KEYS[2]) end
return 1
"""

# KEYS: session (asked for, or a dummy), nick, new session, this node's sessions,
#       sessions rooms (asked for, or a dummy), nodes
# ARGV: asked session ('' none), nick, key, node, conn, new session id, prefix
# Returns {'new'|'takeover', session, nick, rooms, old node} or {'nick_taken'} or
# {'fenced'} when this node was ended by the others.
HELLO: Final = """
local P = ARGV[7]
if redis.call('SISMEMBER', KEYS[6], ARGV[4]) == 0 then return {'fenced'} end
if ARGV[1] ~= '' then
  local s = redis.call('HMGET', KEYS[1], 'key', 'nick', 'node', 'conn')
  if s[1] and s[1] == ARGV[3] then
    redis.call('HSET', KEYS[1], 'node', ARGV[4], 'conn', ARGV[5])
    if s[3] ~= ARGV[4] then
      redis.call('SREM', P .. ':node:' .. s[3] .. ':sessions', ARGV[1])
      redis.call('SADD', KEYS[4], ARGV[1])
      redis.call('PUBLISH', P .. ':node:' .. s[3] .. ':ch', 'R ' .. ARGV[1] .. ' ' .. s[4])
    end
    return {'takeover', ARGV[1], s[2], redis.call('SMEMBERS', KEYS[5]), s[3]}
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'nick_taken'} end
redis.call('SET', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[3], 'nick', ARGV[2], 'key', ARGV[3], 'node', ARGV[4], 'conn', ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
return {'new', ARGV[6], ARGV[2], {}, ARGV[4]}
"""

# KEYS: session. ARGV: session, node, conn, reason, prefix.
# Ends the session only if `conn` on `node` still holds it. Returns 1 if it ended.
END: Final = _END_SESSION + """
local s = redis.call('HMGET', KEYS[1], 'node', 'conn', 'nick', 'key')
if not s[1] or s[1] ~= ARGV[2] or s[2] ~= ARGV[3] then return 0 end
end_session(ARGV[5], ARGV[1], s[3], s[4], ARGV[2], ARGV[4])
return 1
"""

# KEYS: nodes. ARGV: prefix, this node.
# Ends every session of every node whose lease is gone, exactly once: the node leaves
# the set in the same script. Returns the nodes ended.
REAP: Final = _END_SESSION + """
local P = ARGV[1]
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] and redis.call('EXISTS', P .. ':node:' .. node) == 0 then
    for _, sid in ipairs(redis.call('SMEMBERS', P .. ':node:' .. node .. ':sessions')) do
      local s = redis.call('HMGET', P .. ':session:' .. sid, 'nick', 'key')
      if s[1] then end_session(P, sid, s[1], s[2], node, 'timeout') end
    end
    redis.call('DEL', P .. ':node:' .. node .. ':sessions')
    redis.call('SREM', KEYS[1], node)
    table.insert(dead, node)
  end
end
return dead
"""

# KEYS: nodes, lease. ARGV: node, ttl in ms. Returns 0 when the node was ended (fenced).
RENEW: Final = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: nodes, lease. ARGV: node, ttl in ms.
REGISTER: Final = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: session, session rooms, members, rooms
# ARGV: session, room, nick, max rooms, node, channel, presence join frame
# Returns {new member (1|0), members' nicks}, {'too_many_rooms'} or {'gone'} when this
# node no longer holds the session.
ENTER: Final = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[5] then return {'gone'} end
local new = redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0
if new then
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {'too_many_rooms'} end
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[4], 0, ARGV[2])
  redis.call('PUBLISH', ARGV[6], 'P ' .. ARGV[1] .. ' ' .. ARGV[7])
end
return {new and 1 or 0, redis.call('HVALS', KEYS[3])}
"""

# KEYS: session rooms, members. ARGV: session, room, channel, presence leave frame.
EXIT: Final = """
if redis.call('SREM', KEYS[1], ARGV[2]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[3], 'P ' .. ARGV[1] .. ' ' .. ARGV[4])
end
return 1
"""
