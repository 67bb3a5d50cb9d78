using Microsoft.Extensions.Options;
using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// The accepted range of every <see cref="RealtimeOptions"/> value, checked at start: the defaults
/// set in <c>AddRealtime</c> when the options are first read (at the latest when the host starts),
/// each endpoint's overrides in <c>MapRealtime</c>. A value out of range throws
/// <see cref="OptionsValidationException"/> whose message names the option, the value and the
/// range. The ranges keep every use of a value free of overflow: message and buffer sizes fit one
/// array, timeouts fit the timers (<see cref="int.MaxValue"/> milliseconds).
/// </summary>
internal sealed class RealtimeOptionsValidation : IValidateOptions<RealtimeOptions>
{
    /// <summary>The longest timeout: what .NET's timers and <c>Task.Delay</c> accept.</summary>
    internal static readonly TimeSpan MaxTimeout = TimeSpan.FromMilliseconds(int.MaxValue);

    /// <summary>The largest outgoing buffer of one connection (its bytes are held in one array, with room for control frames).</summary>
    internal const long MaxBufferedAmountLimit = 1L << 30;

    /// <summary>The largest receive buffer.</summary>
    internal const int MaxReceiveBufferSize = 16 * 1024 * 1024;

    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, RealtimeOptions options)
    {
        var problems = Problems(options);
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }

    /// <summary>Checks the defaults; throws listing every problem.</summary>
    internal static void ThrowIfInvalid(RealtimeOptions options)
    {
        var problems = Problems(options);
        if (problems.Count > 0) throw new OptionsValidationException(Options.DefaultName, typeof(RealtimeOptions), problems);
    }

    /// <summary>
    /// Checks an endpoint's options: every range, and that the server-wide options were left as
    /// <c>AddRealtime</c> set them. Throws listing every problem, each naming the endpoint.
    /// </summary>
    internal static void ThrowIfInvalidFor(string pattern, RealtimeOptions options, RealtimeOptions defaults)
    {
        var problems = Problems(options);
        if (options.MaxTopicLength != defaults.MaxTopicLength) problems.Add(ServerWide(nameof(RealtimeOptions.MaxTopicLength), "topics are shared by every endpoint"));
        if (options.HandshakeTimeout != defaults.HandshakeTimeout) problems.Add(ServerWide(nameof(RealtimeOptions.HandshakeTimeout), "Kestrel reads the headers before any endpoint is chosen"));
        if (options.MaxServerBufferedBytes != defaults.MaxServerBufferedBytes) problems.Add(ServerWide(nameof(RealtimeOptions.MaxServerBufferedBytes), "one budget holds for the whole server"));
        if (options.ShutdownTimeout != defaults.ShutdownTimeout) problems.Add(ServerWide(nameof(RealtimeOptions.ShutdownTimeout), "the host stops every endpoint at once"));
        if (problems.Count == 0) return;
        throw new OptionsValidationException(pattern, typeof(RealtimeOptions), problems.Select(problem => $"MapRealtime(\"{pattern}\"): {problem}"));
    }

    private static string ServerWide(string option, string why) =>
        $"RealtimeOptions.{option} is server-wide ({why}): set it in AddRealtime, not per endpoint.";

    /// <summary>Every value out of its range, as messages naming the option, the value and the range.</summary>
    internal static List<string> Problems(RealtimeOptions o)
    {
        var problems = new List<string>();
        void Range(string option, long value, long min, long max, string unit)
        {
            if (value < min || value > max) problems.Add($"RealtimeOptions.{option} is {value}; it must be {min} to {max} {unit}.");
        }
        void Duration(string option, TimeSpan value, bool zeroAllowed, string zeroMeans)
        {
            if (zeroAllowed && value == TimeSpan.Zero) return;
            if (value < TimeSpan.FromMilliseconds(1) || value > MaxTimeout)
                problems.Add($"RealtimeOptions.{option} is {value}; it must be {(zeroAllowed ? $"TimeSpan.Zero ({zeroMeans}) or " : "")}1 ms to {MaxTimeout} (int.MaxValue milliseconds).");
        }
        void List(string option, IList<string>? values)
        {
            if (values is null) problems.Add($"RealtimeOptions.{option} is null; it must be a list (empty for none).");
            else if (values.Any(string.IsNullOrWhiteSpace)) problems.Add($"RealtimeOptions.{option} has a null or blank entry; every entry must be a non-blank string.");
        }

        Range(nameof(o.MaxPayloadLength), o.MaxPayloadLength, 1, int.MaxValue, "bytes");
        Duration(nameof(o.IdleTimeout), o.IdleTimeout, zeroAllowed: true, "keep-alive off");
        Duration(nameof(o.CloseTimeout), o.CloseTimeout, zeroAllowed: false, "");
        Duration(nameof(o.ShutdownTimeout), o.ShutdownTimeout, zeroAllowed: true, "close without waiting");
        if (o.HandshakeTimeout is { } handshake) Duration(nameof(o.HandshakeTimeout), handshake, zeroAllowed: false, "");
        // The pair follows the core's rule for backpressure limits (both non-negative, the soft one not above
        // the hard one); a negative BackpressureLimit is its own problem, so the pair is judged from 0.
        var pair = new Backpressure.Limits(Math.Max(0, o.BackpressureLimit), o.MaxBufferedAmount, o.CloseOnBackpressureLimit);
        if (Backpressure.validate(pair).IsError || o.MaxBufferedAmount > MaxBufferedAmountLimit)
            problems.Add($"RealtimeOptions.{nameof(o.MaxBufferedAmount)} is {o.MaxBufferedAmount}; it must be {pair.SoftLimit} to {MaxBufferedAmountLimit} bytes (from BackpressureLimit to 1 GiB).");
        Range(nameof(o.BackpressureLimit), o.BackpressureLimit, 0, MaxBufferedAmountLimit, "bytes");
        Range(nameof(o.MaxServerBufferedBytes), o.MaxServerBufferedBytes, 1, long.MaxValue, "bytes");
        Range(nameof(o.ServerMaxWindowBits), o.ServerMaxWindowBits, 9, 15, "bits (RFC 7692 §7.1.2.1)");
        Range(nameof(o.ClientMaxWindowBits), o.ClientMaxWindowBits, 9, 15, "bits (RFC 7692 §7.1.2.2)");
        if (o.CompressionThreshold is { } threshold) Range(nameof(o.CompressionThreshold), threshold, 0, int.MaxValue, "bytes");
        Range(nameof(o.ReceiveBufferSize), o.ReceiveBufferSize, 256, MaxReceiveBufferSize, "bytes");
        if (o.MaxConnections is { } connections) Range(nameof(o.MaxConnections), connections, 1, int.MaxValue, "connections");
        if (o.MaxConnectionsPerAddress is { } perAddress) Range(nameof(o.MaxConnectionsPerAddress), perAddress, 1, int.MaxValue, "connections");
        Range(nameof(o.MaxHandshakeHeaderBytes), o.MaxHandshakeHeaderBytes, 1024, int.MaxValue, "bytes");
        Range(nameof(o.MaxTopicLength), o.MaxTopicLength, 1, int.MaxValue, "UTF-8 bytes");
        Range(nameof(o.MaxTopicsPerConnection), o.MaxTopicsPerConnection, 0, int.MaxValue, "topics");
        List(nameof(o.Subprotocols), o.Subprotocols);
        List(nameof(o.AllowedOrigins), o.AllowedOrigins);
        return problems;
    }
}
