using System.Text;
using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// A received message. Its bytes live in a pooled buffer that is reused once the <c>Message</c>
/// handler returns (or its task completes): call <see cref="ToArray"/> or read <see cref="Text"/>
/// to keep the content.
/// </summary>
public readonly struct RealtimeMessage
{
    /// <summary>Wraps a message's kind and bytes.</summary>
    public RealtimeMessage(MessageKind kind, ReadOnlyMemory<byte> data)
        : this(kind, data, false)
    {
    }

    /// <summary>Wraps a message's kind and bytes, and whether the client sent it compressed.</summary>
    public RealtimeMessage(MessageKind kind, ReadOnlyMemory<byte> data, bool compressed)
    {
        Kind = kind;
        Data = data;
        Compressed = compressed;
    }

    /// <summary>True when the client sent the message compressed (permessage-deflate); <see cref="Data"/> is already inflated.</summary>
    public bool Compressed { get; }

    /// <summary>Text or binary.</summary>
    public MessageKind Kind { get; }

    /// <summary>The payload (UTF-8 for text), valid only during the handler.</summary>
    public ReadOnlyMemory<byte> Data { get; }

    /// <summary>True for a text message.</summary>
    public bool IsText => Kind == MessageKind.Text;

    /// <summary>True for a binary message.</summary>
    public bool IsBinary => Kind == MessageKind.Binary;

    /// <summary>The payload decoded as UTF-8 (a new string on each call).</summary>
    public string Text => Encoding.UTF8.GetString(Data.Span);

    /// <summary>A copy of the payload that outlives the handler.</summary>
    public byte[] ToArray() => Data.ToArray();

    /// <inheritdoc />
    public override string ToString() => IsText ? Text : $"<{Data.Length} bytes>";
}
