using System.Collections;
using System.Diagnostics.CodeAnalysis;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Primitives;
using Microsoft.Net.Http.Headers;
using Realtime.Protocol;

namespace Realtime.Direct;

/// <summary>
/// The request headers of a directly accepted request: the header lines the core parsed, read in place
/// (names compared case-insensitively, the lines of one name joined in their order, empty values kept,
/// as Kestrel's request headers do) until the application changes them. The first change copies them
/// into an ordinary dictionary that takes every later read and write; from then on
/// <see cref="AsParsed"/> is null, so the handshake reads what the application's pipeline left, as on
/// Kestrel's own path.
/// </summary>
internal sealed class DirectRequestHeaders(Handshake.HttpHeader[] parsed) : IHeaderDictionary
{
    private Handshake.HttpHeader[]? _parsed = parsed;
    private HeaderDictionary? _changed;

    /// <summary>The header lines as parsed, while nothing changed them; null after the first change.</summary>
    public Handshake.HttpHeader[]? AsParsed => _parsed;

    /// <summary>The dictionary that holds the headers from the first change on.</summary>
    private HeaderDictionary Changed()
    {
        if (_changed is not null) return _changed;
        var lines = _parsed!;
        var store = new Dictionary<string, StringValues>(lines.Length, StringComparer.OrdinalIgnoreCase);
        for (int i = 0; i < lines.Length; i++)
        {
            if (FirstOf(lines, i)) store[lines[i].Name] = ValuesOf(lines, lines[i].Name);
        }
        _changed = new HeaderDictionary(store);
        _parsed = null;
        return _changed;
    }

    /// <summary>True when line <paramref name="index"/> is the first with its name.</summary>
    private static bool FirstOf(Handshake.HttpHeader[] lines, int index)
    {
        for (int j = 0; j < index; j++)
        {
            if (string.Equals(lines[j].Name, lines[index].Name, StringComparison.OrdinalIgnoreCase)) return false;
        }
        return true;
    }

    /// <summary>The values of every line named <paramref name="name"/>, in order.</summary>
    private static StringValues ValuesOf(Handshake.HttpHeader[] lines, string name)
    {
        string? single = null;
        List<string>? several = null;
        foreach (var line in lines)
        {
            if (!string.Equals(line.Name, name, StringComparison.OrdinalIgnoreCase)) continue;
            if (single is null && several is null) single = line.Value;
            else (several ??= [single!]).Add(line.Value);
        }
        return several is not null ? new StringValues(several.ToArray()) : single is not null ? new StringValues(single) : StringValues.Empty;
    }

    public StringValues this[string key]
    {
        get => _parsed is { } lines ? ValuesOf(lines, key) : _changed![key];
        set => Changed()[key] = value;
    }

    StringValues IDictionary<string, StringValues>.this[string key]
    {
        get => TryGetValue(key, out var values) ? values : throw new KeyNotFoundException($"no request header {key}");
        set => Changed()[key] = value;
    }

    // As HeaderDictionary reads it: one value, a non-negative integer with optional whitespace around it.
    public long? ContentLength
    {
        get
        {
            if (_parsed is null) return _changed!.ContentLength;
            var values = this[HeaderNames.ContentLength];
            return values.Count == 1 && !string.IsNullOrEmpty(values[0])
                && HeaderUtilities.TryParseNonNegativeInt64(new StringSegment(values[0]).Trim(), out long length)
                ? length
                : null;
        }
        set => Changed().ContentLength = value;
    }

    public ICollection<string> Keys => _parsed is { } lines ? [.. Names(lines)] : _changed!.Keys;

    public ICollection<StringValues> Values => _parsed is { } lines ? [.. Names(lines).Select(name => ValuesOf(lines, name))] : _changed!.Values;

    public int Count => _parsed is { } lines ? Names(lines).Count() : _changed!.Count;

    public bool IsReadOnly => false;

    private static IEnumerable<string> Names(Handshake.HttpHeader[] lines)
    {
        for (int i = 0; i < lines.Length; i++)
        {
            if (FirstOf(lines, i)) yield return lines[i].Name;
        }
    }

    public bool ContainsKey(string key) => _parsed is { } lines ? Array.Exists(lines, line => string.Equals(line.Name, key, StringComparison.OrdinalIgnoreCase)) : _changed!.ContainsKey(key);

    public bool TryGetValue(string key, [MaybeNullWhen(false)] out StringValues value)
    {
        if (_parsed is null) return _changed!.TryGetValue(key, out value);
        value = this[key];
        return ContainsKey(key);
    }

    public bool Contains(KeyValuePair<string, StringValues> item) =>
        TryGetValue(item.Key, out var values) && StringValues.Equals(values, item.Value);

    public void CopyTo(KeyValuePair<string, StringValues>[] array, int arrayIndex)
    {
        foreach (var pair in this) array[arrayIndex++] = pair;
    }

    public IEnumerator<KeyValuePair<string, StringValues>> GetEnumerator()
    {
        if (_parsed is not { } lines)
        {
            foreach (var pair in _changed!) yield return pair;
            yield break;
        }
        foreach (var name in Names(lines)) yield return new(name, ValuesOf(lines, name));
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public void Add(string key, StringValues value) => Changed().Add(key, value);

    public void Add(KeyValuePair<string, StringValues> item) => Changed().Add(item);

    public bool Remove(string key) => Changed().Remove(key);

    public bool Remove(KeyValuePair<string, StringValues> item) => Changed().Remove(item);

    public void Clear() => Changed().Clear();
}
