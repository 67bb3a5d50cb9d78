using System.Buffers;
using System.IO.Pipelines;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;

namespace Realtime.Direct;

/// <summary>
/// The upgrade of a directly accepted connection, standing in for Kestrel's HTTP/1.1 upgrade:
/// <see cref="UpgradeAsync"/> writes the 101 response (with the headers the endpoint set) straight
/// to the connection, whose pipes then carry the WebSocket frames. Also the request's lifetime:
/// aborting it aborts the connection.
/// </summary>
internal sealed class DirectConnectionFeature(ConnectionContext connection, IHttpResponseFeature response)
    : IHttpUpgradeFeature, IHttpRequestLifetimeFeature
{
    public ConnectionContext Connection => connection;

    public IDuplexPipe Transport => connection.Transport;

    /// <summary>True once the 101 response went out.</summary>
    public bool Upgraded { get; private set; }

    public bool IsUpgradableRequest => true;

    public CancellationToken RequestAborted
    {
        get => connection.ConnectionClosed;
        set { }
    }

    public void Abort() => connection.Abort(new ConnectionAbortedException("aborted by the application"));

    public async Task<Stream> UpgradeAsync()
    {
        if (Upgraded) throw new InvalidOperationException("the connection was already upgraded");
        Upgraded = true;
        response.StatusCode = StatusCodes.Status101SwitchingProtocols;
        WriteHead(connection.Transport.Output, StatusCodes.Status101SwitchingProtocols, response.Headers, contentLength: null);
        await connection.Transport.Output.FlushAsync().ConfigureAwait(false);
        // The response is over; what it held need not live as long as the connection.
        response.Headers = new HeaderDictionary();
        return Stream.Null;
    }

    /// <summary>Writes the response the endpoint produced instead of upgrading (a rejection), then the connection closes.</summary>
    public async Task WriteResponseAsync(ReadOnlyMemory<byte> body)
    {
        response.Headers.Connection = "close";
        var output = connection.Transport.Output;
        WriteHead(output, response.StatusCode, response.Headers, body.Length);
        output.Write(body.Span);
        await output.FlushAsync().ConfigureAwait(false);
    }

    private static void WriteHead(PipeWriter output, int status, IHeaderDictionary headers, long? contentLength)
    {
        var head = new StringBuilder(256);
        head.Append("HTTP/1.1 ").Append(status).Append(' ').Append(ReasonPhrases.GetReasonPhrase(status)).Append("\r\n");
        foreach (var (name, values) in headers)
        {
            if (contentLength is not null && string.Equals(name, "Content-Length", StringComparison.OrdinalIgnoreCase)) continue;
            foreach (var value in values)
            {
                // As Kestrel does: a line break in a header would split the response (RFC 9110 §5.5).
                if (value is not null && value.AsSpan().IndexOfAny('\r', '\n') >= 0)
                    throw new InvalidOperationException($"the value of response header {name} contains a line break");
                head.Append(name).Append(": ").Append(value).Append("\r\n");
            }
        }
        if (contentLength is { } length) head.Append("Content-Length: ").Append(length).Append("\r\n");
        head.Append("\r\n");
        // Header values are ASCII here (the handshake's own, or what the application set, which
        // Kestrel would also refuse to send as anything else).
        Encoding.Latin1.GetBytes(head.ToString(), output);
    }
}
