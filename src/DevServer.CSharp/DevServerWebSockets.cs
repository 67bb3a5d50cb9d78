using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.FSharp.Core;
using Realtime.DevServer;
using Realtime.Protocol;

namespace Realtime;

/// <summary>
/// The dev server's web-sockets manager (the <c>webSockets</c> of @web/dev-server plugins): the
/// browser sockets connected to <see cref="RealtimeDevServer.WebSocketPath"/>, messages to all of
/// them or to one, and the messages they send. Messages use the JSON shapes of
/// <c>Realtime.Protocol.DevServerMessages</c>. Safe to use from any thread.
/// </summary>
public sealed class DevServerWebSockets
{
    private readonly IRealtimeServer _server;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<long, RealtimeSocket> _sockets = new();

    internal DevServerWebSockets(IRealtimeServer server, ILogger logger)
    {
        _server = server;
        _logger = logger;
    }

    /// <summary>Options used to turn .NET values into JSON (import arguments, responses): <see cref="JsonSerializerOptions.Web"/>.</summary>
    public static JsonSerializerOptions JsonOptions => JsonSerializerOptions.Web;

    /// <summary>A snapshot of the open browser sockets.</summary>
    public IReadOnlyList<RealtimeSocket> Sockets => _sockets.Values.OrderBy(s => s.Id).ToArray();

    /// <summary>How many browser sockets are open.</summary>
    public int Count => _sockets.Count;

    /// <summary>
    /// Raised for each message a browser sends that is a JSON object with a string <c>type</c>, with
    /// the sending socket and the parsed message. Other messages (not JSON, no <c>type</c>, binary,
    /// or one of the built-in types <c>import</c>, <c>console-log</c> and <c>message-response</c>,
    /// which only the server sends) are logged as warnings and dropped. Handlers run on the sending socket's receive loop, one
    /// message at a time; an exception in one is logged and the others still run.
    /// </summary>
    public event Action<DevServerMessageEvent>? Message;

    /// <summary>Raised when a browser socket has opened.</summary>
    public event Action<RealtimeSocket>? Opened;

    /// <summary>Raised when a browser socket has closed.</summary>
    public event Action<RealtimeSocket>? Closed;

    /// <summary>
    /// Sends a custom message to every open browser socket: <paramref name="json"/> must be a JSON
    /// object with a string <c>type</c> other than the built-in ones (<c>import</c>,
    /// <c>console-log</c>, <c>message-response</c>, sent by <see cref="SendImport"/>,
    /// <see cref="SendConsoleLog"/> and <see cref="DevServerMessageEvent.Respond"/> only, so that
    /// relaying what a page sent can never make the other pages import or log something).
    /// It reaches the pages' message listeners.
    /// </summary>
    /// <returns>How many sockets the message was queued to.</returns>
    /// <exception cref="ArgumentException">The text is not such a message.</exception>
    public int Send(string json) => Broadcast(Checked(json));

    /// <summary>Logs <paramref name="text"/> in the console of every open page.</summary>
    /// <returns>How many sockets the message was queued to.</returns>
    public int SendConsoleLog(string text) => Broadcast(Encode(DevServerMessages.ServerMessage.NewConsoleLog(text)));

    /// <summary>
    /// Makes every open page import the module at <paramref name="importPath"/> and call its default
    /// export with <paramref name="args"/> (each one serialized to JSON with <see cref="JsonOptions"/>).
    /// The path is a path on the dev server's own origin, starting with a single <c>/</c> (a real
    /// file or a plugin's virtual module), or a <c>data:</c> URL; nothing from another origin.
    /// </summary>
    /// <returns>How many sockets the message was queued to.</returns>
    /// <exception cref="ArgumentException">
    /// <paramref name="importPath"/> is neither (<c>//host/x.js</c>, <c>https:</c>, <c>javascript:</c>,
    /// relative paths, backslashes or control characters), or an argument cannot be serialized.
    /// </exception>
    public int SendImport(string importPath, params object?[]? args) => Broadcast(Encode(ImportMessage(importPath, args)));

    /// <summary>Sends a custom message (as in <see cref="Send"/>) to one socket only.</summary>
    /// <exception cref="ArgumentException">As in <see cref="Send"/>.</exception>
    public SendResult SendTo(RealtimeSocket socket, string json)
    {
        ArgumentNullException.ThrowIfNull(socket);
        return socket.Send(Checked(json));
    }

    /// <summary>Logs <paramref name="text"/> in the console of one page only.</summary>
    public SendResult SendConsoleLogTo(RealtimeSocket socket, string text)
    {
        ArgumentNullException.ThrowIfNull(socket);
        return socket.Send(Encode(DevServerMessages.ServerMessage.NewConsoleLog(text)));
    }

    /// <summary>Makes one page import a module and call its default export (as in <see cref="SendImport"/>).</summary>
    /// <exception cref="ArgumentException">As in <see cref="SendImport"/>.</exception>
    public SendResult SendImportTo(RealtimeSocket socket, string importPath, params object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(socket);
        return socket.Send(Encode(ImportMessage(importPath, args)));
    }

    internal static string ToJson(object? value) =>
        value is null ? "null" : JsonSerializer.Serialize(value, value.GetType(), JsonOptions);

    internal static string Encode(DevServerMessages.ServerMessage message)
    {
        var result = DevServerMessages.encode(message);
        if (result.IsError) throw new ArgumentException($"{result.ErrorValue.Code}: {result.ErrorValue.Message}");
        return result.ResultValue;
    }

    /// <summary>A custom message checked and made canonical by the core; the built-in types are refused.</summary>
    internal static string Checked(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        var encoded = DevServerMessages.encode(DevServerMessages.ServerMessage.NewCustom(json));
        if (encoded.IsError)
            throw new ArgumentException($"Not a custom dev-server message ({encoded.ErrorValue.Code}): {encoded.ErrorValue.Message}", nameof(json));
        return encoded.ResultValue;
    }

    private static DevServerMessages.ServerMessage ImportMessage(string importPath, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(importPath);
        if (!DevServerMessages.isAllowedImportPath(importPath))
            throw new ArgumentException(DevServerMessages.MessageError.NewUnsafeImportPath(importPath).Message, nameof(importPath));
        var json = args is null ? [] : Array.ConvertAll(args, ToJson);
        return DevServerMessages.ServerMessage.NewImport(importPath, json);
    }

    private int Broadcast(string text) => _server.Broadcast(RealtimeDevServer.WebSocketPath, text);

    internal void Add(RealtimeSocket socket)
    {
        _sockets[socket.Id] = socket;
        Raise(Opened, socket, nameof(Opened));
    }

    internal void Remove(RealtimeSocket socket)
    {
        if (_sockets.TryRemove(socket.Id, out _)) Raise(Closed, socket, nameof(Closed));
    }

    internal void Receive(RealtimeSocket socket, RealtimeMessage message)
    {
        if (!message.IsText)
        {
            _logger.MessageDropped(socket.Id, "binary", "Binary messages are not dev-server messages.", $"<{message.Data.Length} bytes>");
            return;
        }
        string text = message.Text;
        var decoded = DevServerMessages.decodeBrowser(text);
        if (decoded.IsError)
        {
            _logger.MessageDropped(socket.Id, decoded.ErrorValue.Code, decoded.ErrorValue.Message, Preview(text));
            return;
        }
        var handlers = Message;
        if (handlers is null) return;
        var browser = decoded.ResultValue;
        var id = browser.Id.IsSome ? browser.Id.Value : null;
        using var document = JsonDocument.Parse(text);
        var messageEvent = new DevServerMessageEvent(socket, browser.Type, id, text, document.RootElement.Clone());
        foreach (var handler in handlers.GetInvocationList().Cast<Action<DevServerMessageEvent>>())
        {
            try
            {
                handler(messageEvent);
            }
            catch (Exception exception)
            {
                _logger.MessageHandlerFailed(exception, browser.Type, socket.Id);
            }
        }
    }

    private void Raise(Action<RealtimeSocket>? handlers, RealtimeSocket socket, string name)
    {
        if (handlers is null) return;
        foreach (var handler in handlers.GetInvocationList().Cast<Action<RealtimeSocket>>())
        {
            try
            {
                handler(socket);
            }
            catch (Exception exception)
            {
                _logger.SocketHandlerFailed(exception, name, socket.Id);
            }
        }
    }

    private static string Preview(string text) => text.Length <= 200 ? text : string.Concat(text.AsSpan(0, 200), "...");
}

/// <summary>
/// A message a browser sent: the socket it came from and the parsed JSON, with helpers to answer
/// that socket only.
/// </summary>
public sealed class DevServerMessageEvent
{
    private readonly DevServerMessages.RequestId? _id;

    internal DevServerMessageEvent(RealtimeSocket webSocket, string type, DevServerMessages.RequestId? id, string json, JsonElement data)
    {
        WebSocket = webSocket;
        Type = type;
        _id = id;
        Json = json;
        Data = data;
    }

    /// <summary>The socket that sent the message.</summary>
    public RealtimeSocket WebSocket { get; }

    /// <summary>The message's <c>type</c>.</summary>
    public string Type { get; }

    /// <summary>The whole message as parsed JSON (an object).</summary>
    public JsonElement Data { get; }

    /// <summary>The message's text exactly as received.</summary>
    public string Json { get; }

    /// <summary>
    /// True when the message carries an <c>id</c>: it was sent with <c>sendMessageWaitForResponse</c>
    /// and the page waits for <see cref="Respond"/>.
    /// </summary>
    public bool ExpectsResponse => _id is not null;

    /// <summary>
    /// Answers a request (<see cref="ExpectsResponse"/>): the page's <c>sendMessageWaitForResponse</c>
    /// promise resolves with <paramref name="response"/> serialized to JSON. Only the sending socket gets it.
    /// </summary>
    /// <exception cref="InvalidOperationException">The message has no id.</exception>
    public SendResult Respond(object? response) => RespondJson(DevServerWebSockets.ToJson(response));

    /// <summary>Answers a request with a response that is already JSON text.</summary>
    /// <exception cref="InvalidOperationException">The message has no id.</exception>
    /// <exception cref="ArgumentException"><paramref name="json"/> is not JSON.</exception>
    public SendResult RespondJson(string json)
    {
        if (_id is null) throw new InvalidOperationException($"The \"{Type}\" message has no id, so nothing waits for a response.");
        return WebSocket.Send(DevServerWebSockets.Encode(DevServerMessages.ServerMessage.NewResponse(_id, json)));
    }

    /// <summary>
    /// Sends a custom message to the sending socket only (checked as in <see cref="DevServerWebSockets.Send"/>):
    /// a JSON object with a string <c>type</c> other than the built-in ones.
    /// </summary>
    /// <exception cref="ArgumentException">As in <see cref="DevServerWebSockets.Send"/>.</exception>
    public SendResult Reply(string json) => WebSocket.Send(DevServerWebSockets.Checked(json));

    /// <inheritdoc />
    public override string ToString() => $"{Type} from {WebSocket}";
}
