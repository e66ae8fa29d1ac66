-- Applies one batch of a session's events to its document, atomically
-- (layout 2; docs/design.md "The apply step").
--
-- KEYS[1] the document (RedisJSON, exactly what the api serves);
-- KEYS[2] the session's state hash; KEYS[3] the session's summary
-- (RedisJSON, rewritten whole by every step that changes the session; the
-- query engine indexes it for `GET /sessions`), KEYS[4] the session's event
-- names (a sorted set, for the summary).
--
-- ARGV[1] the empty document (JSON text); ARGV[2] the batch's smallest
-- SESSION_START timestamp or ''; ARGV[3] its largest SESSION_END timestamp
-- or ''; ARGV[4] the most children a session may hold (0: no limit);
-- ARGV[5] the document TTL in seconds (0: none); then three columns over
-- the batch's EVENTs, sorted by (timestamp, position): ARGV[6] their
-- identities (16 bytes each), ARGV[7] their positions (8 bytes: the stream
-- sequence in 6 and the index in the frame in 2, big-endian), ARGV[8] their
-- order records (16 bytes: the timestamp
-- as a big-endian IEEE double, then the position); then the lifecycle
-- (docs/design.md "Session lifecycle"), times in milliseconds of the
-- JetStream clock: ARGV[9] the earliest arrival of the batch's frames,
-- ARGV[10] the latest, ARGV[11] the latest arrival of a frame holding a
-- SESSION_END ('' for none), ARGV[12] the lifecycle settings (see
-- `parse_lifecycle`; '' when sessions never close by themselves, and a
-- closed one then always takes frames); ARGV[13] what the session's summary
-- needs of the batch (docs/design.md §4.2; '' keeps no summary), binary:
-- the session_id and its token (each a u16 length, then the bytes), the
-- batch's distinct event names as tokens (a u16 count, then each a u16
-- length and the bytes), the most names a summary lists (u16), then one u16
-- per EVENT in ARGV order: the index of its name in that list, 0xFFFF for
-- no name, 0xFFFE for a name too long to keep; ARGV[14..] the EVENTs' JSON.
--
-- The state hash holds, beside a few scalars:
-- * identities, for de-duplication: buckets `b<k>` of 24-byte records
--   (identity, position), spread by linear hashing on the identity's first
--   four bytes (`lvl`, `spl`; about BUCKET_LOAD records a bucket, so a
--   look-up reads a few hundred bytes whatever the session's size);
-- * the order of the children: chunks `c<id>` of sorted 16-byte order
--   records, each a run of consecutive children; pages `d<id>` list the
--   chunks in order (first record, children, id), and the index `pi` the
--   pages (first record, children, id), so a record's rank takes two binary
--   searches and sums over at most a page and the index, and an append
--   touches only the last page and chunk; `lr` is the newest child's
--   record, so that in-order arrival appends without searching. (Lua
--   strings are hashed whole when made, so no step rewrites a string that
--   grows with the session.)
-- Records compare as bytes (timestamps are never negative, so their
-- big-endian bits order like the numbers), as unsigned 32-bit words:
-- never with Lua's `<` on strings, which follows the server's locale.
--
-- Idempotent: an event is written only when its identity is new, or when
-- its position is earlier in the stream than the one kept (the earlier
-- arrival then replaces it), so the same batch again, or batches in any
-- order, give the same document.
--
-- Every check that refuses the batch (a full session, a state that does
-- not match the document) runs before the first write.
--
-- Answers {written, revision, ops, skipped, first, last, end, state, timer,
-- armed}: the children written, the session's revision after the step, what changed in `children` in order
-- (9 bytes an op: 'i', rank, count: the next `count` written events went in
-- from `rank` on; 'r', rank, 1: the child at `rank` was taken out, an
-- earlier arrival replacing it), and the events not written (u32 event
-- numbers, 0-based: repeats; the written events are every event but the
-- skipped ones, in order), then the session's first and latest arrival and
-- latest SESSION_END arrival after the step ('' for none); `new` (this
-- step made the session), `open`, `reopened` (it was closed, and this batch came within its lateness and
-- changed it) or `closed` (it was closed, and this batch changed nothing:
-- a redelivery of frames applied before the close); then the session's
-- timer: when it is due ('' for none) and '1' when this step armed it (the
-- processor must schedule it) or ''.
--
-- The timer (state field `td`) is the due time of the session's one
-- pending schedule on the timers stream; the step arms it only when it
-- must fire earlier than the pending one (a new session, a SESSION_END),
-- and on a reopening. A later due needs nothing: the close step, run when the
-- pending schedule fires, finds the session not due yet and schedules it
-- again.

local doc, state = KEYS[1], KEYS[2]
local summary, names_key = KEYS[3], KEYS[4]
local empty, start_candidate, end_candidate = ARGV[1], ARGV[2], ARGV[3]
local max_children = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local identities, positions, order_records = ARGV[6], ARGV[7], ARGV[8]
local first_arrival, last_arrival = tonumber(ARGV[9]), tonumber(ARGV[10])
local end_arrival = tonumber(ARGV[11])
local lifecycle = parse_lifecycle(ARGV[12])
local lateness = lifecycle and lifecycle.lateness
local summary_input = ARGV[13]
local FIRST_CHILD = 14
local events = #identities / 16

-- Records per bucket before the next bucket splits.
local BUCKET_LOAD = 16
-- Records in a chunk past which it splits in halves.
local CHUNK_MAX = 128
-- Chunks in a page of the directory past which it splits in two.
local PAGE = 32
-- Directory entry: first record (16), count (2), chunk id (4).
local ENTRY = 22
-- Values per bulk call, well below Lua's limit on unpacked arguments.
local BULK = 256

local sub, find_plain, concat = string.sub, string.find, table.concat
local pack, unpack_ = struct.pack, struct.unpack

local function fail(code, message)
  return redis.error_reply('SESSIONFOLD_' .. code .. ' ' .. message)
end

-- Compares the 16-byte records of a (at offset ao) and b (at bo): -1, 0, 1.
local function compare(a, ao, b, bo)
  local a1, a2, a3, a4 = unpack_('>I4I4I4I4', a, ao)
  local b1, b2, b3, b4 = unpack_('>I4I4I4I4', b, bo)
  if a1 ~= b1 then return a1 < b1 and -1 or 1 end
  if a2 ~= b2 then return a2 < b2 and -1 or 1 end
  if a3 ~= b3 then return a3 < b3 and -1 or 1 end
  if a4 ~= b4 then return a4 < b4 and -1 or 1 end
  return 0
end

-- Compares two 8-byte positions: -1, 0, 1.
local function compare_positions(a, b)
  local a1, a2 = unpack_('>I4I4', a)
  local b1, b2 = unpack_('>I4I4', b)
  if a1 ~= b1 then return a1 < b1 and -1 or 1 end
  if a2 ~= b2 then return a2 < b2 and -1 or 1 end
  return 0
end

-- ------------------------------------------------------------------ state
local fields = redis.call('HMGET', state, 'v', 'n', 'lvl', 'spl', 'pi', 'np', 'nc', 's', 'e',
  'rev', 'cmp', 'lr', 'st', 'ca', 'fa', 'la', 'ea', 'td')
local fresh = fields[1] == false
-- Closed: its state, the close's time; the session's arrivals so far.
local closed, closed_at = fields[13], tonumber(fields[14])
local session_first, session_last = tonumber(fields[15]), tonumber(fields[16])
local session_end = tonumber(fields[17])
local timer_due = tonumber(fields[18])
if closed then
  -- A frame for a closed session: taken (the session opens again) while
  -- within its lateness, else refused for good.
  if fields[11] or (lateness and first_arrival and first_arrival > closed_at + lateness) then
    return fail('CLOSED', 'the session closed (' .. closed .. ') at ' .. tostring(closed_at)
      .. ' and takes no frame past its allowed lateness')
  end
end
if fields[11] then
  return fail('CLOSED', state .. ' holds a finished session')
end
local count = tonumber(fields[2]) or 0
local children_before = count
local level = tonumber(fields[3]) or 0
local split = tonumber(fields[4]) or 0
local index = fields[5] or ''
local next_page = tonumber(fields[6]) or 0
local next_chunk = tonumber(fields[7]) or 0
local current_start, current_end = fields[8], fields[9]
local revision = tonumber(fields[10]) or 0
local last_record = fields[12] or nil

local doc_length = nil
if not fresh or redis.call('EXISTS', doc) == 1 then
  local reply = redis.pcall('JSON.ARRLEN', doc, '$.children')
  if type(reply) == 'table' and reply.err == nil then
    doc_length = reply[1]
  end
end
if fresh then
  if doc_length and doc_length > 0 then
    -- Also a session of the first layout, which kept no state hash:
    -- `sessionfold rebuild` rebuilds it from the stream.
    return fail('CORRUPT', doc .. ' has children but ' .. state .. ' is missing')
  end
  if doc_length then
    -- A document without children and without state: keep its bounds.
    local bounds = cjson.decode(redis.call('JSON.GET', doc, '$.start', '$.end'))
    local s, e = bounds['$.start'][1], bounds['$.end'][1]
    if s ~= nil and s ~= cjson.null then current_start = tostring(s) end
    if e ~= nil and e ~= cjson.null then current_end = tostring(e) end
  end
elseif doc_length ~= count then
  -- Also a missing document, or one without a `children` array.
  return fail('CORRUPT', doc .. ' holds ' .. tostring(doc_length) .. ' children, '
    .. state .. ' counts ' .. count)
end

-- --------------------------------------------------------- de-duplication
local low_buckets = 2 ^ level
local function bucket_of(identity)
  local h = unpack_('>I4', identity)
  local b = h % low_buckets
  if b < split then
    b = h % (low_buckets * 2)
  end
  return b
end

local identity_of, bucket_at = {}, {}
local buckets = {}        -- bucket number -> its stored records (a string)
do
  local wanted = {}
  for i = 0, events - 1 do
    local identity = sub(identities, i * 16 + 1, i * 16 + 16)
    local b = bucket_of(identity)
    identity_of[i], bucket_at[i] = identity, b
    if buckets[b] == nil then
      buckets[b] = ''
      wanted[#wanted + 1] = b
    end
  end
  for from = 1, #wanted, BULK do
    local names = {}
    for k = from, math.min(from + BULK - 1, #wanted) do
      names[#names + 1] = 'b' .. wanted[k]
    end
    local found = redis.call('HMGET', state, unpack(names))
    for k = 1, #names do
      buckets[wanted[from + k - 1]] = found[k] or ''
    end
  end
end

-- The stored position (8 bytes) of `identity` in bucket b, and its offset.
local function stored_position(identity, b)
  local records_of = buckets[b]
  local at = 1
  while true do
    local hit = find_plain(records_of, identity, at, true)
    if not hit then return nil end
    if (hit - 1) % 24 == 0 then
      return sub(records_of, hit + 16, hit + 23), hit
    end
    at = hit + 1
  end
end

-- Which events get written: per identity the earliest position, when it is
-- earlier than the stored one (or there is none).
local best = {}           -- identity -> event number of its best in the batch
local write = {}          -- event number -> true
local replaces = {}       -- event number -> the stored position it replaces
local new_identities = 0
for i = 0, events - 1 do
  local identity = identity_of[i]
  local earlier = best[identity]
  if earlier == nil then
    local stored = stored_position(identity, bucket_at[i])
    if stored == nil then
      new_identities = new_identities + 1
      best[identity] = i
      write[i] = true
    else
      best[identity] = -1
      if compare_positions(sub(positions, i * 8 + 1, i * 8 + 8), stored) < 0 then
        best[identity] = i
        write[i] = true
        replaces[i] = stored
      end
    end
  else
    -- The identity again in this batch: only an earlier position counts.
    local current = earlier >= 0 and sub(positions, earlier * 8 + 1, earlier * 8 + 8)
      or stored_position(identity, bucket_at[i])
    if compare_positions(sub(positions, i * 8 + 1, i * 8 + 8), current) < 0 then
      best[identity] = i
      write[i] = true
      if earlier >= 0 then
        write[earlier] = nil
        replaces[i] = replaces[earlier]
        replaces[earlier] = nil
      else
        replaces[i] = current
      end
    end
  end
end
if max_children > 0 and count + new_identities > max_children then
  return fail('FULL', 'the session would hold ' .. (count + new_identities)
    .. ' children; the limit is ' .. max_children)
end

local function refresh_ttl()
  if ttl > 0 then
    redis.call('EXPIRE', doc, ttl)
    redis.call('EXPIRE', state, ttl)
    if summary_input ~= '' then
      redis.call('EXPIRE', summary, ttl)
      redis.call('EXPIRE', names_key, ttl)
    end
  end
end
-- The session's arrivals with this batch's.
local function earliest(a, b) if a == nil then return b end if b == nil then return a end return math.min(a, b) end
local function latest(a, b) if a == nil then return b end if b == nil then return a end return math.max(a, b) end
session_first = earliest(session_first, first_arrival)
session_last = latest(session_last, last_arrival)
session_end = latest(session_end, end_arrival)
local arrivals_move = session_first ~= tonumber(fields[15]) or session_last ~= tonumber(fields[16])
  or session_end ~= tonumber(fields[17])
-- Arms the session's timer when it must fire before the pending one:
-- its due time and whether it was armed now.
local function arm_timer(still_closed)
  if still_closed then return timer_due, false end
  local due = close_due(lifecycle, session_first, session_last, session_end)
  -- A reopened session's pending timer is its compaction, on the closed
  -- sessions' subject: it needs its own close timer.
  if due and (timer_due == nil or due < timer_due or closed) then
    redis.call('HSET', state, 'td', tostring(due))
    return due, true
  end
  return timer_due, false
end
-- What the processor needs for the session's timers.
local function lifecycle_answer(still_closed)
  local due, armed = arm_timer(still_closed)
  local open = 'open'
  if still_closed then open = 'closed' elseif closed then open = 'reopened'
  elseif fresh then open = 'new' end
  return {tostring(session_first or ''), tostring(session_last or ''),
    tostring(session_end or ''), open, tostring(due or ''), armed and '1' or ''}
end
local function bound_moves(candidate, current, wins)
  return candidate ~= '' and (not current or wins(tonumber(candidate), tonumber(current)))
end
local start_moves = bound_moves(start_candidate, current_start, function(a, b) return a < b end)
local end_moves = bound_moves(end_candidate, current_end, function(a, b) return a > b end)

-- ------------------------------------------------------------ summary
-- The session's summary (docs/design.md §4.2): one small JSON document
-- rewritten whole from the state above and the names of the session's
-- children, so its upkeep costs the same at any size of the session. The
-- state hash counts the children carrying each name (`m:<token>`), names too
-- long to keep (`ml`), and says when the names of children written before
-- summaries existed are unknown (`mu`) and when some names are not counted
-- (`mo`, past MAX_COUNTED_NAMES; see below); KEYS[4] holds the names in byte
-- order (a sorted set, all scores 0). The summary lists the first
-- `max_names` of them and says `names_capped` when there are more (or long
-- or unknown ones), so it depends on the children alone, not on the order
-- they came in. Its `state` is `open`: every step that writes opens the
-- session, and closing it sets `$.state` alone.
local MAX_COUNTED_NAMES = 128
local name_counts = {}    -- token -> change of its count in this step
local long_names = 0      -- change of the count of too-long names
local function hex_double(x)
  if x == 0 then x = 0 end  -- no -0, whose sign bit would sort it last
  return string.format('%02x%02x%02x%02x%02x%02x%02x%02x', string.byte(pack('>d', x), 1, 8))
end
-- The batch's names, from ARGV[13].
local summary_session, summary_token, batch_names, max_names, name_column
if summary_input ~= '' then
  local at = 1
  local function u16()
    local value
    value, at = unpack_('>I2', summary_input, at)
    return value
  end
  local function text()
    local length = u16()
    local value = sub(summary_input, at, at + length - 1)
    at = at + length
    return value
  end
  summary_session, summary_token = text(), text()
  batch_names = {}
  for k = 1, u16() do batch_names[k] = text() end
  max_names = u16()
  name_column = at
end
-- Counts the name of event i (0-based, ARGV order), written now.
local function count_name_of_event(i)
  if summary_input == '' then return end
  local n = unpack_('>I2', summary_input, name_column + 2 * i)
  if n == 65534 then
    long_names = long_names + 1
  elseif n ~= 65535 then
    local token = batch_names[n + 1]
    name_counts[token] = (name_counts[token] or 0) + 1
  end
end
-- Uncounts the name of a child taken out (its JSON), with the same escape
-- the processor uses.
local function uncount_name_of_child(json)
  if summary_input == '' then return end
  local name = cjson.decode(json).name
  if type(name) ~= 'string' then return end
  if #name > 128 then
    long_names = long_names - 1
    return
  end
  local token = string.gsub(name, '[^A-Za-z0-9%-]', function(c) return string.format('_%02x', string.byte(c)) end)
  name_counts[token] = (name_counts[token] or 0) - 1
end
local function keep_summary(children_before)
  if summary_input == '' then return end
  local known = redis.call('HMGET', state, 'ml', 'mu', 'mo')
  local long_count = (tonumber(known[1]) or 0) + long_names
  local unknown = known[2] or (children_before > 0 and redis.call('EXISTS', summary) == 0)
  local overflowed = known[3] and true or false
  local updates = {}
  -- Only the MAX_COUNTED_NAMES smallest tokens are counted (`mo` once some
  -- were left out): every name left out is larger than every counted one,
  -- so the first names in byte order stay exact and the count stays
  -- bounded. The batch's names are read and written in a few calls, however
  -- many distinct names it carries.
  local tracked = redis.call('ZCARD', names_key)
  local bound = nil  -- once some were left out: the largest counted token
  if overflowed and tracked > 0 then
    bound = redis.call('ZRANGE', names_key, '+', '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1]
  end
  local tokens = {}
  for token, change in pairs(name_counts) do
    if change ~= 0 and not (bound and token > bound) then tokens[#tokens + 1] = token end
  end
  if #tokens > 0 then
    table.sort(tokens)
    local function chunked(command, key, args)
      local out = {}
      for at = 1, #args, 4000 do  -- even: pairs stay whole
        local reply = redis.call(command, key, unpack(args, at, math.min(at + 3999, #args)))
        if type(reply) == 'table' then
          for _, value in ipairs(reply) do out[#out + 1] = value end
        end
      end
      return out
    end
    local fields = {}
    for k, token in ipairs(tokens) do fields[k] = 'm:' .. token end
    local counts = chunked('HMGET', state, fields)
    local counted_now, new_tokens, gone = {}, {}, {}
    for k, token in ipairs(tokens) do
      local before = tonumber(counts[k]) or 0
      local now = before + name_counts[token]
      if now > 0 then
        counted_now[token] = now
        if before <= 0 then new_tokens[#new_tokens + 1] = token end
      elseif before > 0 then
        gone[#gone + 1] = token
      end
    end
    -- Past the cap, the counted names become the smallest of those counted
    -- before and the new ones; the set is read (it is small) rather than
    -- grown and cut, so it never passes the cap, not even within a step.
    local evicted = {}
    if tracked + #new_tokens - #gone > MAX_COUNTED_NAMES then
      local leaving = {}
      for _, token in ipairs(gone) do leaving[token] = true end
      local candidates = {}
      for _, token in ipairs(redis.call('ZRANGE', names_key, '-', '+', 'BYLEX')) do
        if not leaving[token] then candidates[#candidates + 1] = token end
      end
      local was_counted = {}
      for _, token in ipairs(candidates) do was_counted[token] = true end
      for _, token in ipairs(new_tokens) do candidates[#candidates + 1] = token end
      table.sort(candidates)
      for k = MAX_COUNTED_NAMES + 1, #candidates do
        local token = candidates[k]
        if was_counted[token] then evicted[#evicted + 1] = token end
        counted_now[token] = nil
      end
      local kept_new = {}
      for _, token in ipairs(new_tokens) do
        if counted_now[token] then kept_new[#kept_new + 1] = token end
      end
      new_tokens = kept_new
      if not overflowed then
        overflowed = true
        updates[#updates + 1] = 'mo'; updates[#updates + 1] = '1'
      end
    end
    local set, added, removed_fields, removed = {}, {}, {}, {}
    for _, token in ipairs(tokens) do
      if counted_now[token] then
        set[#set + 1] = 'm:' .. token; set[#set + 1] = tostring(counted_now[token])
      end
    end
    for _, token in ipairs(new_tokens) do added[#added + 1] = '0'; added[#added + 1] = token end
    for _, list in ipairs({gone, evicted}) do
      for _, token in ipairs(list) do
        removed[#removed + 1] = token; removed_fields[#removed_fields + 1] = 'm:' .. token
      end
    end
    if #set > 0 then chunked('HSET', state, set) end
    if #removed > 0 then
      chunked('HDEL', state, removed_fields)
      chunked('ZREM', names_key, removed)
    end
    if #added > 0 then chunked('ZADD', names_key, added) end
    tracked = tracked + #new_tokens - #removed
  end
  if long_names ~= 0 then updates[#updates + 1] = 'ml'; updates[#updates + 1] = tostring(long_count) end
  if unknown and not known[2] then updates[#updates + 1] = 'mu'; updates[#updates + 1] = '1' end
  if #updates > 0 then redis.call('HSET', state, unpack(updates)) end
  local names = redis.call('ZRANGE', names_key, '-', '+', 'BYLEX', 'LIMIT', 0, max_names)
  local capped = unknown or overflowed or long_count > 0 or tracked > max_names
  local quoted = {}
  for k, name in ipairs(names) do quoted[k] = '"' .. name .. '"' end
  local function number_or_null(value)
    if value == nil or value == false then return 'null' end
    return value
  end
  local function arrival(ms)
    if ms == nil then return 'null' end
    return string.format('%.0f', ms)
  end
  local sort_start
  if current_start then
    sort_start = 's' .. hex_double(tonumber(current_start)) .. summary_token
  else
    sort_start = 'u' .. hex_double(session_first or 0) .. summary_token
  end
  redis.call('JSON.SET', summary, '$', concat({
    '{"session_id":', cjson.encode(summary_session),
    ',"token":"', summary_token,
    '","state":"open","start":', number_or_null(current_start),
    ',"end":', number_or_null(current_end),
    ',"children":', tostring(count),
    ',"first_arrival":', arrival(session_first),
    ',"last_arrival":', arrival(session_last),
    ',"names":[', concat(quoted, ','),
    '],"names_capped":', capped and 'true' or 'false',
    ',"sort_start":"', sort_start,
    '","sort_activity":"', hex_double(session_last or 0), summary_token, '"}'}))
end
if next(write) == nil and not start_moves and not end_moves and not fresh then
  if closed then
    -- Nothing new for a closed session: it stays closed, untouched.
    local answer = {0, revision, '', ''}
    for _, value in ipairs(lifecycle_answer(true)) do answer[#answer + 1] = value end
    return answer
  end
  -- Nothing new: no revision, but the frame still renews the TTL and
  -- counts as activity.
  if arrivals_move then
    local moved = {}
    if session_first then moved[#moved + 1] = 'fa'; moved[#moved + 1] = tostring(session_first) end
    if session_last then moved[#moved + 1] = 'la'; moved[#moved + 1] = tostring(session_last) end
    if session_end then moved[#moved + 1] = 'ea'; moved[#moved + 1] = tostring(session_end) end
    redis.call('HSET', state, unpack(moved))
    keep_summary(count)
  end
  refresh_ttl()
  local answer = {0, revision, '', ''}
  for _, value in ipairs(lifecycle_answer(false)) do answer[#answer + 1] = value end
  return answer
end

-- ------------------------------------------------------------- the order
-- The index `pi`: per page, its first record (16), its children (u32) and
-- its id (u32). A page `d<id>`: per chunk, its first record (16), its
-- children (u16) and its id (u32). A chunk `c<id>`: its sorted records.
local PAGE_ENTRY = 24
local chunks, changed_chunks = {}, {}
local dirs, changed_dirs, removed = {}, {}, {}

local function pages_n() return #index / PAGE_ENTRY end
local function page_count(p) return (unpack_('>I4', index, p * PAGE_ENTRY + 17)) end
local function page_id(p) return (unpack_('>I4', index, p * PAGE_ENTRY + 21)) end
local function entry_count(dir, k) return (unpack_('>I2', dir, k * ENTRY + 17)) end
local function entry_id(dir, k) return (unpack_('>I4', dir, k * ENTRY + 19)) end

local function load(field, cache, id)
  local value = cache[id]
  if value == nil then
    value = redis.call('HGET', state, field .. id) or ''
    cache[id] = value
  end
  return value
end
local function chunk(id) return load('c', chunks, id) end
local function dir_of(pid) return load('d', dirs, pid) end

-- The last index entry whose first record is not after `record` (at
-- offset `ro`), or the first: binary search over `entries` entries of
-- `size` bytes in `list`.
local function last_not_after(list, size, entries, record, ro)
  local low, high = 0, entries - 1
  while low < high do
    local middle = math.floor((low + high + 1) / 2)
    if compare(list, middle * size + 1, record, ro) <= 0 then
      low = middle
    else
      high = middle - 1
    end
  end
  return low
end

-- Records of `records_of` before `record` (at `ro`).
local function rank_in(records_of, record, ro)
  local low, high = 0, #records_of / 16
  while low < high do
    local middle = math.floor((low + high) / 2)
    if compare(records_of, middle * 16 + 1, record, ro) < 0 then
      low = middle + 1
    else
      high = middle
    end
  end
  return low
end

-- Where `record` belongs: page p, entry k of that page, and the children
-- before that chunk.
local function locate(record, ro)
  local p = last_not_after(index, PAGE_ENTRY, pages_n(), record, ro)
  local rank = 0
  for q = 0, p - 1 do
    rank = rank + page_count(q)
  end
  local dir = dir_of(page_id(p))
  local k = last_not_after(dir, ENTRY, #dir / ENTRY, record, ro)
  for j = 0, k - 1 do
    rank = rank + entry_count(dir, j)
  end
  return p, k, rank
end

-- Replaces index entry p with `pieces` (strings of page entries).
local function set_pages(p, replaced, pieces)
  index = sub(index, 1, p * PAGE_ENTRY) .. concat(pieces) .. sub(index, (p + replaced) * PAGE_ENTRY + 1)
end
local function page_entry(dir, pid)
  local n = 0
  for j = 0, #dir / ENTRY - 1 do
    n = n + entry_count(dir, j)
  end
  return sub(dir, 1, 16) .. pack('>I4I4', n, pid)
end

-- Stores page p's directory `dir` (its id `pid`): split in pages of
-- PAGE / 2 entries when it is over PAGE, dropped when empty.
local function store_dir(p, pid, dir, added)
  local n = #dir / ENTRY
  if n == 0 then
    set_pages(p, 1, {})
    dirs[pid], changed_dirs[pid] = nil, nil
    removed[#removed + 1] = 'd' .. pid
  elseif n > PAGE then
    local pieces, at, first = {}, 0, true
    while at < n do
      local size = n - at
      if size > PAGE then size = PAGE / 2 end
      local piece = sub(dir, at * ENTRY + 1, (at + size) * ENTRY)
      local piece_id = pid
      if not first then
        piece_id = next_page
        next_page = next_page + 1
      end
      first = false
      dirs[piece_id], changed_dirs[piece_id] = piece, true
      pieces[#pieces + 1] = page_entry(piece, piece_id)
      at = at + size
    end
    set_pages(p, 1, pieces)
  else
    dirs[pid], changed_dirs[pid] = dir, true
    set_pages(p, 1, {sub(dir, 1, 16) .. pack('>I4I4', page_count(p) + added, pid)})
  end
end

-- Writes `records_of` as entry k of page p (the chunk `id`): one chunk, or
-- several of CHUNK_MAX / 2 when over CHUNK_MAX; `added` children more
-- than before (negative: fewer).
local function store_chunk(p, k, id, records_of, added)
  local pid = page_id(p)
  local dir = dir_of(pid)
  local n = #records_of / 16
  local parts = {}
  if n == 0 then
    removed[#removed + 1] = 'c' .. id
    chunks[id], changed_chunks[id] = nil, nil
  else
    local at, first = 0, true
    while at < n do
      local size = n - at
      if size > CHUNK_MAX then size = CHUNK_MAX / 2 end
      local piece = sub(records_of, at * 16 + 1, (at + size) * 16)
      local piece_id = id
      if not first then
        piece_id = next_chunk
        next_chunk = next_chunk + 1
      end
      first = false
      chunks[piece_id], changed_chunks[piece_id] = piece, true
      parts[#parts + 1] = sub(piece, 1, 16) .. pack('>I2I4', size, piece_id)
      at = at + size
    end
  end
  store_dir(p, pid, sub(dir, 1, k * ENTRY) .. concat(parts) .. sub(dir, (k + 1) * ENTRY + 1), added)
end

-- Appends `records_of` (all after the newest child) to the last chunk.
local function append(records_of, added)
  if pages_n() == 0 then
    local pid, id = next_page, next_chunk
    next_page, next_chunk = next_page + 1, next_chunk + 1
    dirs[pid] = ''
    index = sub(records_of, 1, 16) .. pack('>I4I4', 0, pid)
    chunks[id] = ''
    store_chunk(0, 0, id, records_of, added)
    return
  end
  local p = pages_n() - 1
  local dir = dir_of(page_id(p))
  local k = #dir / ENTRY - 1
  local id = entry_id(dir, k)
  store_chunk(p, k, id, chunk(id) .. records_of, added)
end

-- Takes the record with `position` out of the order (scanning: only an
-- earlier arrival replacing a kept child needs it); returns its rank.
local function remove(position)
  local rank = 0
  for p = 0, pages_n() - 1 do
    local dir = dir_of(page_id(p))
    for k = 0, #dir / ENTRY - 1 do
      local id = entry_id(dir, k)
      local records_of = chunk(id)
      local at = 1
      while true do
        local hit = find_plain(records_of, position, at, true)
        if not hit then break end
        if (hit - 1) % 16 == 8 then
          local r = (hit - 9) / 16
          local taken = sub(records_of, hit - 8, hit + 7)
          store_chunk(p, k, id, sub(records_of, 1, r * 16) .. sub(records_of, r * 16 + 17), -1)
          if last_record and compare(taken, 1, last_record, 1) == 0 then
            last_record = nil
            if pages_n() > 0 then
              local last_dir = dir_of(page_id(pages_n() - 1))
              last_record = sub(chunk(entry_id(last_dir, #last_dir / ENTRY - 1)), -16)
            end
          end
          return rank + r
        end
        at = hit + 1
      end
      rank = rank + #records_of / 16
    end
  end
  return nil
end

-- ---------------------------------------------------------------- writes
if fresh and not doc_length then
  redis.call('JSON.SET', doc, '$', empty)
end
if start_moves then
  redis.call('JSON.SET', doc, '$.start', start_candidate)
  current_start = start_candidate
end
if end_moves then
  redis.call('JSON.SET', doc, '$.end', end_candidate)
  current_end = end_candidate
end

local ops = {}
local written = 0

-- Earlier arrivals first take their kept child out.
for i, kept in pairs(replaces) do
  local rank = remove(kept)
  if rank then
    local popped = redis.call('JSON.ARRPOP', doc, '$.children', rank)
    uncount_name_of_child(popped[1])
    count = count - 1
    ops[#ops + 1] = 'r' .. pack('>I4I4', rank, 1)
  end
  local b = bucket_at[i]
  local _, at = stored_position(identity_of[i], b)
  buckets[b] = sub(buckets[b], 1, at - 1) .. sub(buckets[b], at + 24)
end

-- The written events in order; those after the newest child are appends.
local to_write, skipped = {}, {}
for i = 0, events - 1 do
  if write[i] then
    to_write[#to_write + 1] = i
    count_name_of_event(i)
  else
    skipped[#skipped + 1] = pack('>I4', i)
  end
end
local first_append = #to_write + 1
for w, i in ipairs(to_write) do
  if last_record == nil or compare(order_records, i * 16 + 1, last_record, 1) > 0 then
    first_append = w
    break
  end
end

-- Sends events `list[from..to]` to the document: inserted at `rank`, or
-- appended when `rank` is nil. One call per BULK events.
local function send(list, from, to, rank)
  for at = from, to, BULK do
    local last = math.min(at + BULK - 1, to)
    local values = {}
    for w = at, last do
      values[#values + 1] = ARGV[FIRST_CHILD + list[w]]
    end
    if rank then
      redis.call('JSON.ARRINSERT', doc, '$.children', rank + at - from, unpack(values))
    else
      redis.call('JSON.ARRAPPEND', doc, '$.children', unpack(values))
    end
  end
end

-- Inserts (older than the newest child), merged chunk by chunk: every
-- record of one chunk goes in with one rewrite of that chunk.
local w = 1
while w < first_append do
  local i = to_write[w]
  local p, k, base = locate(order_records, i * 16 + 1)
  local dir = dir_of(page_id(p))
  local id = entry_id(dir, k)
  local old = chunk(id)
  -- This chunk takes the records before the next chunk's first record
  -- (the next page's, after the page's last chunk).
  local next_first, next_offset = nil, nil
  if k + 1 < #dir / ENTRY then
    next_first, next_offset = dir, (k + 1) * ENTRY + 1
  elseif p + 1 < pages_n() then
    next_first, next_offset = index, (p + 1) * PAGE_ENTRY + 1
  end
  local group_end = w
  while group_end + 1 < first_append and (next_first == nil
      or compare(order_records, to_write[group_end + 1] * 16 + 1, next_first, next_offset) < 0) do
    group_end = group_end + 1
  end
  local parts, taken = {}, 0
  local run_start, run_rank = nil, nil
  for g = w, group_end do
    local e = to_write[g]
    local r = rank_in(old, order_records, e * 16 + 1)
    parts[#parts + 1] = sub(old, taken * 16 + 1, r * 16)
    parts[#parts + 1] = sub(order_records, e * 16 + 1, e * 16 + 16)
    taken = r
    local rank = base + r + (g - w)
    if not (run_start and rank == run_rank + (g - run_start)) then
      if run_start then
        send(to_write, run_start, g - 1, run_rank)
        ops[#ops + 1] = 'i' .. pack('>I4I4', run_rank, g - run_start)
      end
      run_start, run_rank = g, rank
    end
  end
  send(to_write, run_start, group_end, run_rank)
  ops[#ops + 1] = 'i' .. pack('>I4I4', run_rank, group_end - run_start + 1)
  parts[#parts + 1] = sub(old, taken * 16 + 1)
  store_chunk(p, k, id, concat(parts), group_end - w + 1)
  count = count + (group_end - w + 1)
  written = written + (group_end - w + 1)
  w = group_end + 1
end

-- Appends: consecutive written events go out together, and their order
-- records onto the last chunk.
if first_append <= #to_write then
  local tail, from = {}, first_append
  for a = first_append, #to_write + 1 do
    -- A gap in the event numbers ends a segment of the records column.
    if a > #to_write or (a > from and to_write[a] ~= to_write[a - 1] + 1) then
      local first, last = to_write[from], to_write[a - 1]
      tail[#tail + 1] = sub(order_records, first * 16 + 1, last * 16 + 16)
      from = a
    end
  end
  local added = #to_write - first_append + 1
  send(to_write, first_append, #to_write, nil)
  ops[#ops + 1] = 'i' .. pack('>I4I4', count, added)
  local records_of = concat(tail)
  last_record = sub(records_of, -16)
  append(records_of, added)
  count = count + added
  written = written + added
end

-- Identities: every written event's (identity, position) in its bucket.
local additions = {}
for _, i in ipairs(to_write) do
  local b = bucket_at[i]
  local list = additions[b]
  if list == nil then
    list = {buckets[b]}
    additions[b] = list
  end
  list[#list + 1] = identity_of[i]
  list[#list + 1] = sub(positions, i * 8 + 1, i * 8 + 8)
end
local changed_buckets = {}
for b, list in pairs(additions) do
  buckets[b] = concat(list)
  changed_buckets[b] = true
end
for i in pairs(replaces) do
  changed_buckets[bucket_at[i]] = true
end

-- Linear hashing: one bucket splits for every BUCKET_LOAD identities past
-- the load, so buckets stay small at any size.
while count > BUCKET_LOAD * (2 ^ level + split) do
  local from_bucket = split
  local records_of = buckets[from_bucket]
  if records_of == nil then
    records_of = redis.call('HGET', state, 'b' .. from_bucket) or ''
  end
  local stay, move = {}, {}
  local high = 2 ^ level
  for at = 1, #records_of, 24 do
    local h = unpack_('>I4', records_of, at)
    if h % (high * 2) == from_bucket then
      stay[#stay + 1] = sub(records_of, at, at + 23)
    else
      move[#move + 1] = sub(records_of, at, at + 23)
    end
  end
  buckets[from_bucket] = concat(stay)
  buckets[from_bucket + high] = concat(move)
  changed_buckets[from_bucket], changed_buckets[from_bucket + high] = true, true
  split = split + 1
  if split == high then
    level, split = level + 1, 0
  end
end

revision = revision + 1
local updates = {'v', '2', 'n', tostring(count), 'lvl', tostring(level), 'spl', tostring(split),
  'pi', index, 'np', tostring(next_page), 'nc', tostring(next_chunk), 'rev', tostring(revision)}
if last_record then
  updates[#updates + 1] = 'lr'
  updates[#updates + 1] = last_record
end
if current_start then
  updates[#updates + 1] = 's'
  updates[#updates + 1] = current_start
end
if current_end then
  updates[#updates + 1] = 'e'
  updates[#updates + 1] = current_end
end
for _, field in ipairs({{'fa', session_first}, {'la', session_last}, {'ea', session_end}}) do
  if field[2] then
    updates[#updates + 1] = field[1]
    updates[#updates + 1] = tostring(field[2])
  end
end
if closed then
  redis.call('HDEL', state, 'st', 'ca')
end
for b in pairs(changed_buckets) do
  updates[#updates + 1] = 'b' .. b
  updates[#updates + 1] = buckets[b]
end
for id in pairs(changed_chunks) do
  updates[#updates + 1] = 'c' .. id
  updates[#updates + 1] = chunks[id]
end
for pid in pairs(changed_dirs) do
  updates[#updates + 1] = 'd' .. pid
  updates[#updates + 1] = dirs[pid]
end
if #removed > 0 then
  redis.call('HDEL', state, unpack(removed))
end
for from = 1, #updates, BULK * 2 do
  redis.call('HSET', state, unpack(updates, from, math.min(from + BULK * 2 - 1, #updates)))
end
-- The summary, from the state above (its section is before the early
-- return, which keeps it too).
keep_summary(children_before)

refresh_ttl()
local answer = {written, revision, concat(ops), concat(skipped)}
for _, value in ipairs(lifecycle_answer(false)) do answer[#answer + 1] = value end
-- This step changed the document (the answers above return without it).
answer[#answer + 1] = '1'
return answer
