-- The close step: what a session's fired timer does, atomically and
-- idempotently (docs/design.md "Session lifecycle"). It runs on the same
-- state hash as the apply step, whose header describes its fields.
--
-- KEYS[1] the document; KEYS[2] the session's state hash; KEYS[3] its
-- summary (docs/design.md §4.2), whose `state` the close sets; KEYS[4] the
-- event names the summary is kept from (dropped with the compaction: the
-- summary changes no more).
-- ARGV[1] the mode: 'due' (the session's timer fired) or 'published' (its
-- finished message for revision ARGV[3] is stored); ARGV[2] now, in
-- milliseconds of the JetStream clock (when the timer fired: the same on
-- every redelivery); ARGV[4] the lifecycle settings (`parse_lifecycle`).
--
-- In mode 'due' it answers one of:
-- * {'gone'}: no such session (it expired, or never was);
-- * {'compacted'}: it closed past its lateness and its order and
--   identities are gone; nothing is left to do;
-- * {'later', due, kind}: not due yet (a frame came since the timer was
--   set, or the session waits for its compaction); the timer is now `due`,
--   to be scheduled as an `open` session's or a `closed` one's;
-- * {'none'}: nothing closes it (the settings changed);
-- * {'closed', reason, revision, closed_at, due, timer, document}: closed,
--   now or before, and its finished message for `revision` is not known to
--   be stored: publish it, then call 'published'; `due` is when it was due
--   (for the timer's lag; '' when it closed before), `timer` when the
--   compaction is due (to be scheduled);
-- * {'compacted_now', reason, revision}: closed longer than its lateness
--   ago: its de-duplication and order state is dropped, the document and
--   the scalars stay, and from now on the apply step refuses every frame.
-- In mode 'published' it answers 1 (or 0 when the session changed since).
--
-- The close does not change the revision: the revision counts changes to
-- the document, and a reopening always makes one, so `<token>:<revision>`
-- names one close.

local doc, state, summary, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, now = ARGV[1], tonumber(ARGV[2])
local lifecycle = parse_lifecycle(ARGV[4])

local f = redis.call('HMGET', state, 'v', 'st', 'ca', 'fa', 'la', 'ea', 'rev', 'td', 'pub', 'cmp',
  'n', 's', 'e')
local version, closed, closed_at = f[1], f[2], tonumber(f[3])
local first, last, ended = tonumber(f[4]), tonumber(f[5]), tonumber(f[6])
local revision, published, compacted = f[7] or '0', f[9], f[10]

if mode == 'published' then
  if closed and revision == ARGV[3] then
    redis.call('HSET', state, 'pub', revision)
    return 1
  end
  return 0
end

if not version then return {'gone'} end
if compacted then return {'compacted'} end
if lifecycle == nil then return {'none'} end

local function finished(due)
  local document = redis.call('JSON.GET', doc) or ''
  return {'closed', closed, revision, tostring(closed_at), tostring(due or ''),
    tostring(closed_at + lifecycle.lateness), document}
end

if not closed then
  local due, reason = close_due(lifecycle, first, last, ended)
  if due == nil then
    redis.call('HDEL', state, 'td')
    return {'none'}
  end
  if due > now then
    redis.call('HSET', state, 'td', tostring(due))
    return {'later', tostring(due), 'open'}
  end
  closed, closed_at = reason, now
  redis.call('HSET', state, 'st', reason, 'ca', tostring(now),
    'td', tostring(now + lifecycle.lateness))
  if redis.call('EXISTS', summary) == 1 then
    redis.call('JSON.SET', summary, '$.state', cjson.encode(reason))
  end
  return finished(due)
end

if published ~= revision then
  return finished(nil)
end

local compaction_due = closed_at + lifecycle.lateness
if now < compaction_due then
  redis.call('HSET', state, 'td', tostring(compaction_due))
  return {'later', tostring(compaction_due), 'closed'}
end

-- Past the lateness no frame is taken again, so the identities and the
-- order can go: only the scalars stay (what readers and the close need).
local keep = {'v', version, 'n', f[11] or '0', 'rev', revision, 'st', closed, 'ca', f[3],
  'pub', published, 'cmp', '1'}
for i, name in ipairs({'fa', 'la', 'ea', 's', 'e'}) do
  local value = ({f[4], f[5], f[6], f[12], f[13]})[i]
  if value then keep[#keep + 1] = name; keep[#keep + 1] = value end
end
local ttl = redis.call('PTTL', state)
redis.call('DEL', state, names)
redis.call('HSET', state, unpack(keep))
if ttl > 0 then redis.call('PEXPIRE', state, ttl) end
return {'compacted_now', closed, revision}
