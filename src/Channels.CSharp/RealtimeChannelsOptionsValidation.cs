using Microsoft.Extensions.Options;

namespace Realtime.Channels;

/// <summary>
/// The accepted range of every <see cref="RealtimeChannelsOptions"/> value, checked when the options are
/// first read (at the latest when the host starts): a value out of range throws
/// <see cref="OptionsValidationException"/> whose message names the option, the value and the range.
/// </summary>
internal sealed class RealtimeChannelsOptionsValidation : IValidateOptions<RealtimeChannelsOptions>
{
    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, RealtimeChannelsOptions options)
    {
        var problems = Problems(options);
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }

    internal static List<string> Problems(RealtimeChannelsOptions o)
    {
        var problems = new List<string>();
        void Check(bool ok, string option, object value, string range)
        {
            if (!ok) problems.Add($"RealtimeChannelsOptions.{option} is {value}; it must be {range}.");
        }
        var retention = o.Retention;
        if (retention is null)
        {
            problems.Add("RealtimeChannelsOptions.Retention is null; it must be set.");
        }
        else
        {
            Check(retention.MaxCount >= 0, "Retention.MaxCount", retention.MaxCount, "0 or more publications");
            Check(retention.MaxBytes >= 0, "Retention.MaxBytes", retention.MaxBytes, "0 or more bytes");
            Check(retention.MaxAge >= TimeSpan.Zero, "Retention.MaxAge", retention.MaxAge, "zero or more");
            Check(retention.MaxKeys >= 0, "Retention.MaxKeys", retention.MaxKeys, "0 or more keys");
        }
        Check(o.MaxChannelsPerConnection >= 1, nameof(o.MaxChannelsPerConnection), o.MaxChannelsPerConnection, "1 or more");
        Check(o.MaxPublishesInFlight >= 1, nameof(o.MaxPublishesInFlight), o.MaxPublishesInFlight, "1 or more");
        Check(o.MaxChannels >= 1, nameof(o.MaxChannels), o.MaxChannels, "1 or more");
        Check(o.MaxDataBytes >= 1, nameof(o.MaxDataBytes), o.MaxDataBytes, "1 to 2147483647 bytes");
        if (o.ChannelNameRule is null) problems.Add("RealtimeChannelsOptions.ChannelNameRule is null; it must be set.");
        if (string.IsNullOrEmpty(o.NodeId)) problems.Add("RealtimeChannelsOptions.NodeId is empty; it must name this node.");
        return problems;
    }
}
