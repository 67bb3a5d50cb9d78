using Microsoft.Extensions.Options;

namespace Realtime.Channels.Redis;

/// <summary>
/// Checks <see cref="RedisChannelsOptions"/> when the host starts: a value out of range fails the start
/// with <see cref="OptionsValidationException"/> naming the option, the value and the range.
/// </summary>
internal sealed class RedisChannelsOptionsValidation : IValidateOptions<RedisChannelsOptions>
{
    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, RedisChannelsOptions options)
    {
        var problems = options.Problems();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}
