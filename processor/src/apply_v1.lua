-- Applies one batch of a session's events to its document, atomically.
--
-- KEYS[1] document (RedisJSON), KEYS[2] identity -> position hash,
-- KEYS[3] position sorted set scored by timestamp (its order is the order of
-- $.children).
-- ARGV[1] the empty document (JSON text), ARGV[2] the batch's smallest
-- SESSION_START timestamp or '', ARGV[3] its largest SESSION_END timestamp or
-- '', ARGV[4] the most children a session may hold (0: no limit), ARGV[5]
-- the document TTL in seconds (0: none), then four values per EVENT:
-- identity, position, timestamp, event JSON.
--
-- Idempotent: an event is written only when its identity is new, or when this
-- position is earlier in the stream than the one kept, so applying the same
-- batch again, or batches in any order, gives the same document.
--
-- Cost: a batch's children come in (timestamp, position) order, so every
-- new child after the session's newest one is an append. Those go out in
-- bulk, one HSET, one ZADD and one JSON.ARRAPPEND per CHUNK children, and
-- the identities are looked up with one HMGET per CHUNK, so the work per
-- event is O(log n) and the Redis calls per event a small fraction of one.
-- Any other child (older than the newest, or an earlier arrival replacing a
-- kept one) takes the slow path: HSET, ZADD, ZRANK, then JSON.ARRINSERT
-- (O(n)) or JSON.ARRAPPEND.
--
-- Every check that can refuse the batch runs before the first write, so a
-- refused batch leaves nothing half-written.
--
-- With a TTL, every successful apply (re)sets it on all three keys, so a
-- session's keys vanish together TTL seconds after its last frame.

local doc, ids, order = KEYS[1], KEYS[2], KEYS[3]
local empty, start_candidate, end_candidate = ARGV[1], ARGV[2], ARGV[3]
local max_children = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local FIRST_EVENT = 6
-- Values per bulk call, well below Lua's limit on unpacked arguments.
local CHUNK = 256

local function fail(code, message)
  return redis.error_reply('SESSIONFOLD_' .. code .. ' ' .. message)
end

-- The stored position of every identity in the batch (false: none).
local stored = {}
do
  local pending = {}
  local function lookup()
    local found = redis.call('HMGET', ids, unpack(pending))
    for k, identity in ipairs(pending) do
      stored[identity] = found[k]
    end
    pending = {}
  end
  for i = FIRST_EVENT, #ARGV, 4 do
    local identity = ARGV[i]
    if stored[identity] == nil then
      stored[identity] = false
      pending[#pending + 1] = identity
      if #pending == CHUNK then
        lookup()
      end
    end
  end
  if #pending > 0 then
    lookup()
  end
end

-- Pass 1: which events are new or earlier arrivals, without writing.
local writes = {}
local new_identities = 0
local planned = {}
for i = FIRST_EVENT, #ARGV, 4 do
  local identity, position = ARGV[i], ARGV[i + 1]
  local kept = planned[identity]
  if kept == nil then
    kept = stored[identity]
    if kept == false then
      new_identities = new_identities + 1
    end
  end
  if kept == false or position < kept then
    planned[identity] = position
    writes[#writes + 1] = i
  end
end
local existing = redis.call('ZCARD', order)
if max_children > 0 and existing + new_identities > max_children then
  return fail('FULL', 'the session would hold ' .. (existing + new_identities)
    .. ' children; the limit is ' .. max_children)
end

if redis.call('EXISTS', doc) == 0 then
  redis.call('JSON.SET', doc, '$', empty)
end

local function bound(path, candidate, replaces)
  if candidate == '' then
    return
  end
  local current = cjson.decode(redis.call('JSON.GET', doc, path))[1]
  if current == nil then
    return fail('CORRUPT', doc .. ' has no ' .. path)
  end
  if current == cjson.null or replaces(tonumber(candidate), current) then
    redis.call('JSON.SET', doc, path, candidate)
  end
end
local err = bound('$.start', start_candidate, function(new, cur) return new < cur end)
  or bound('$.end', end_candidate, function(new, cur) return new > cur end)
if err then
  return err
end

-- Pass 2: write. An identity may occur more than once in the batch; each
-- write re-checks against what is stored by then (`stored`, kept up to date).
local count = existing
local last_score, last_position
local function read_last()
  local last = redis.call('ZRANGE', order, -1, -1, 'WITHSCORES')
  last_position, last_score = last[1], tonumber(last[2])
end
read_last()

local appends = {}
local function check_length(reply)
  if type(reply) ~= 'table' or reply[1] ~= count then
    return fail('CORRUPT', doc .. ' children do not match ' .. order)
  end
end
-- Writes the pending appends, CHUNK at a time.
local function flush()
  local n = #appends
  local from = 1
  while from <= n do
    local to = math.min(from + CHUNK - 1, n)
    local fields, members, children = {}, {}, {}
    for k = from, to do
      local i = appends[k]
      fields[#fields + 1] = ARGV[i]
      fields[#fields + 1] = ARGV[i + 1]
      members[#members + 1] = ARGV[i + 2]
      members[#members + 1] = ARGV[i + 1]
      children[#children + 1] = ARGV[i + 3]
    end
    redis.call('HSET', ids, unpack(fields))
    redis.call('ZADD', order, unpack(members))
    local reply = redis.call('JSON.ARRAPPEND', doc, '$.children', unpack(children))
    if type(reply) ~= 'table' or reply[1] ~= count - n + to then
      return fail('CORRUPT', doc .. ' children do not match ' .. order)
    end
    from = to + 1
  end
  appends = {}
end

local written = 0
for _, i in ipairs(writes) do
  local identity, position, score, child = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local kept = stored[identity]
  if kept == false or position < kept then
    local value = tonumber(score)
    if kept == false and (last_position == nil or value > last_score
        or (value == last_score and position > last_position)) then
      -- After the newest child: an append, written in bulk.
      appends[#appends + 1] = i
      count = count + 1
      last_score, last_position = value, position
    else
      err = flush()
      if err then
        return err
      end
      if kept then
        local old_rank = redis.call('ZRANK', order, kept)
        redis.call('JSON.ARRPOP', doc, '$.children', old_rank)
        redis.call('ZREM', order, kept)
        count = count - 1
      end
      redis.call('HSET', ids, identity, position)
      redis.call('ZADD', order, score, position)
      local rank = redis.call('ZRANK', order, position)
      count = count + 1
      local reply
      if rank == count - 1 then
        reply = redis.call('JSON.ARRAPPEND', doc, '$.children', child)
      else
        reply = redis.call('JSON.ARRINSERT', doc, '$.children', rank, child)
      end
      err = check_length(reply)
      if err then
        return err
      end
      if kept then
        read_last()
      elseif rank == count - 1 then
        last_score, last_position = value, position
      end
    end
    stored[identity] = position
    written = written + 1
  end
end
err = flush()
if err then
  return err
end
if ttl > 0 then
  for _, key in ipairs({doc, ids, order}) do
    redis.call('EXPIRE', key, ttl)
  end
end
return written
