namespace Realtime.Channels.Redis;

/// <summary>
/// The Lua scripts that keep a channel's history in Redis. Each runs atomically in Redis, so Redis is
/// the channel's one serialization point: offsets are assigned there, without gaps, in the order the
/// appends arrive from every node.
/// </summary>
/// <remarks>
/// Keys of one channel (all with the channel's hash tag, so that they live on one Redis Cluster slot):
/// KEYS[1] the hash <c>epoch</c>, <c>last</c> (offset of the latest publication), <c>bytes</c> (data bytes
/// held), <c>kscore</c> (the score of the latest remembered publish key); KEYS[2] the stream, one entry
/// per publication with id <c>&lt;offset&gt;-0</c> and fields <c>d</c> (data) and <c>t</c> (Redis time,
/// ms); KEYS[3] the hash of recent publish keys (key to offset); KEYS[4] the sorted set of those keys by
/// time (ms, raised by 1/1024 where needed so that the scores follow the order the keys came in, also
/// within one millisecond). A channel without its hash (never used, or expired, or
/// removed) starts a new history: a new epoch from the caller, offsets from 1, the other keys cleared.
/// </remarks>
internal static class HistoryScripts
{
    /// <summary>The position hash's field of the epoch.</summary>
    public const string EpochField = "epoch";

    /// <summary>The position hash's field of the latest offset.</summary>
    public const string LastField = "last";

    private const string Common = """
        local function now_ms()
          local t = redis.call('TIME')
          return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end

        local function offset_of(id)
          return tonumber(string.match(id, '^%d+'))
        end

        local function epoch_of(candidate)
          local epoch = redis.call('HGET', KEYS[1], 'epoch')
          if epoch then return epoch end
          redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
          redis.call('HSET', KEYS[1], 'epoch', candidate, 'last', 0, 'bytes', 0)
          return candidate
        end

        local function trim(now, max_count, max_bytes, max_age)
          local count = redis.call('XLEN', KEYS[2])
          local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
          if count == 0 then
            if bytes ~= 0 then redis.call('HSET', KEYS[1], 'bytes', 0) end
            return
          end
          local start = '-'
          local removed = false
          local done = false
          -- Usually an append trims one entry or none: read two, then more while all go.
          local page = math.max(2, math.min(64, count - max_count + 1))
          while not done and count > 0 do
            local batch = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', page)
            page = math.min(64, page * 2)
            if #batch == 0 then break end
            for _, entry in ipairs(batch) do
              local fields = entry[2]
              local too_old = tonumber(fields[4]) < now - max_age
              if count > max_count or bytes > max_bytes or too_old then
                count = count - 1
                bytes = bytes - #fields[2]
                removed = entry[1]
              else
                done = true
                break
              end
            end
            if removed then start = '(' .. removed end
          end
          if removed then
            redis.call('XTRIM', KEYS[2], 'MINID', (offset_of(removed) + 1) .. '-0')
            redis.call('HSET', KEYS[1], 'bytes', bytes)
          end
        end

        local function forget_keys(cutoff, max_keys)
          local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. cutoff, 'LIMIT', 0, 64)
          if #old > 0 then
            redis.call('HDEL', KEYS[3], unpack(old))
            redis.call('ZREM', KEYS[4], unpack(old))
          end
          local over = redis.call('ZCARD', KEYS[4]) - max_keys
          if over > 0 then
            local popped = redis.call('ZPOPMIN', KEYS[4], over)
            for i = 1, #popped, 2 do redis.call('HDEL', KEYS[3], popped[i]) end
          end
        end

        local function keep_for(expiry)
          for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], expiry) end
        end

        """;

    /// <summary>
    /// Appends publications, in the order given, as one step (one round trip for a batch). ARGV: candidate
    /// epoch, max count, max bytes, max age ms, key expiry ms, publish-key age ms, max publish keys (the
    /// retention's MaxKeys), then data and publish key ('' for none) of each publication. Each is handled
    /// as if appended alone: a key seen before, also earlier in the batch, appends nothing; the keys are
    /// forgotten by age and count before each check and after each remember. Trimmed once at the end
    /// (what trimming after each would leave). Returns {epoch, then per publication its offset and 1 when
    /// the key was seen before (nothing appended) else 0}.
    /// </summary>
    public const string Append = Common + """
        local now = now_ms()
        local epoch = epoch_of(ARGV[1])
        local key_cutoff = now - tonumber(ARGV[6])
        local max_keys = tonumber(ARGV[7])
        local result = {epoch}
        local added = 0
        -- Keys are forgotten oldest first (ZPOPMIN): scores must keep the order keys were remembered in,
        -- also within one millisecond (a batch runs in one), so each is above the last one given.
        local last_score = tonumber(redis.call('HGET', KEYS[1], 'kscore') or '0')
        local scored = false
        for i = 8, #ARGV, 2 do
          local data = ARGV[i]
          local key = ARGV[i + 1]
          local seen = false
          if key ~= '' then
            forget_keys(key_cutoff, max_keys)
            seen = redis.call('HGET', KEYS[3], key)
          end
          if seen then
            result[#result + 1] = tonumber(seen)
            result[#result + 1] = 1
          else
            local offset = redis.call('HINCRBY', KEYS[1], 'last', 1)
            redis.call('XADD', KEYS[2], offset .. '-0', 'd', data, 't', now)
            added = added + #data
            if key ~= '' then
              redis.call('HSET', KEYS[3], key, offset)
              last_score = math.max(now, last_score + 1 / 1024)
              scored = true
              redis.call('ZADD', KEYS[4], string.format('%.17g', last_score), key)
              forget_keys(key_cutoff, max_keys)
            end
            result[#result + 1] = offset
            result[#result + 1] = 0
          end
        end
        if added > 0 then redis.call('HINCRBY', KEYS[1], 'bytes', added) end
        if scored then redis.call('HSET', KEYS[1], 'kscore', string.format('%.17g', last_score)) end
        trim(now, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
        keep_for(tonumber(ARGV[5]))
        return result
        """;

    /// <summary>
    /// Reads the channel's position and what it holds after a position. ARGV: candidate epoch, since
    /// epoch ('' for none), since offset, most entries to return (0: position only), max count, max
    /// bytes, max age ms, key expiry ms. Returns {epoch, last offset, first offset held (last + 1
    /// when none), then offset and data of each entry after the position, oldest first: all held ones
    /// when the position is of another epoch or past the last offset (ChannelRecovery.plan's rule)}.
    /// </summary>
    public const string Read = Common + """
        local now = now_ms()
        local epoch = epoch_of(ARGV[1])
        trim(now, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
        keep_for(tonumber(ARGV[8]))
        local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
        local first = last + 1
        local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
        if #head > 0 then first = offset_of(head[1][1]) end
        local from = first
        if ARGV[2] == epoch then
          local since = tonumber(ARGV[3])
          if since == last then from = last + 1
          elseif since < last then from = math.max(first, since + 1) end
        end
        local result = {epoch, last, first}
        local most = tonumber(ARGV[4])
        if most > 0 and from <= last then
          local entries = redis.call('XRANGE', KEYS[2], from .. '-0', '+', 'COUNT', most)
          for _, entry in ipairs(entries) do
            result[#result + 1] = offset_of(entry[1])
            result[#result + 1] = entry[2][2]
          end
        end
        return result
        """;
}
