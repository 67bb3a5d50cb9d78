/// The head of an HTTP/1.1 response as bytes: status line (RFC 9112 §4), field lines (§5) and the empty line
/// that ends them, for a host that writes responses itself below an HTTP server (a connection accepted
/// directly: its 101 Switching Protocols and its refusals). The host decides which header lines the response
/// carries; this decides how they are written.
module Realtime.Protocol.ResponseHead

open System
open System.Text
open Realtime.Protocol.Handshake

/// The outcome of `render`.
type Rendering =
    /// The whole head, blank line included, as Latin-1 bytes (ASCII for ASCII text).
    | Rendered of head: byte[]
    /// The value of the header `name` contains a CR or LF, which would end its line early and let the value
    /// write lines of its own (RFC 9110 §5.5, RFC 9112 §2.2): nothing was rendered.
    | SplitsResponse of name: string

/// The reason phrase of a status code: RFC 9110 §15's (and RFC 6585's, RFC 4918's, ...) as ASP.NET Core's
/// `ReasonPhrases` writes them, so that a response written here reads as Kestrel's would; empty for a
/// status without one (RFC 9112 §4 allows an empty reason phrase).
let reasonPhrase (status: int) : string =
    match status with
    | 100 -> "Continue"
    | 101 -> "Switching Protocols"
    | 102 -> "Processing"
    | 200 -> "OK"
    | 201 -> "Created"
    | 202 -> "Accepted"
    | 203 -> "Non-Authoritative Information"
    | 204 -> "No Content"
    | 205 -> "Reset Content"
    | 206 -> "Partial Content"
    | 207 -> "Multi-Status"
    | 208 -> "Already Reported"
    | 226 -> "IM Used"
    | 300 -> "Multiple Choices"
    | 301 -> "Moved Permanently"
    | 302 -> "Found"
    | 303 -> "See Other"
    | 304 -> "Not Modified"
    | 305 -> "Use Proxy"
    | 306 -> "Switch Proxy"
    | 307 -> "Temporary Redirect"
    | 308 -> "Permanent Redirect"
    | 400 -> "Bad Request"
    | 401 -> "Unauthorized"
    | 402 -> "Payment Required"
    | 403 -> "Forbidden"
    | 404 -> "Not Found"
    | 405 -> "Method Not Allowed"
    | 406 -> "Not Acceptable"
    | 407 -> "Proxy Authentication Required"
    | 408 -> "Request Timeout"
    | 409 -> "Conflict"
    | 410 -> "Gone"
    | 411 -> "Length Required"
    | 412 -> "Precondition Failed"
    | 413 -> "Payload Too Large"
    | 414 -> "URI Too Long"
    | 415 -> "Unsupported Media Type"
    | 416 -> "Range Not Satisfiable"
    | 417 -> "Expectation Failed"
    | 418 -> "I'm a teapot"
    | 419 -> "Authentication Timeout"
    | 421 -> "Misdirected Request"
    | 422 -> "Unprocessable Entity"
    | 423 -> "Locked"
    | 424 -> "Failed Dependency"
    | 426 -> "Upgrade Required"
    | 428 -> "Precondition Required"
    | 429 -> "Too Many Requests"
    | 431 -> "Request Header Fields Too Large"
    | 451 -> "Unavailable For Legal Reasons"
    | 499 -> "Client Closed Request"
    | 500 -> "Internal Server Error"
    | 501 -> "Not Implemented"
    | 502 -> "Bad Gateway"
    | 503 -> "Service Unavailable"
    | 504 -> "Gateway Timeout"
    | 505 -> "HTTP Version Not Supported"
    | 506 -> "Variant Also Negotiates"
    | 507 -> "Insufficient Storage"
    | 508 -> "Loop Detected"
    | 510 -> "Not Extended"
    | 511 -> "Network Authentication Required"
    | _ -> ""

let private standardPhrase = reasonPhrase

let private orEmpty (text: string) = if isNull text then "" else text

let private splitsLine (text: string) = text.AsSpan().IndexOfAny('\r', '\n') >= 0

/// Renders "HTTP/1.1 {status} {reason}\r\n", then "{name}: {value}\r\n" for each header in order (several lines
/// with one name stay several lines), then "\r\n". An empty or null `reasonPhrase` stands for the status's
/// own (`reasonPhrase`). The host chooses the headers: nothing is added or left out, except null entries;
/// null names and values are written as empty. Never throws: a CR or LF in the reason phrase or in a header
/// value gives SplitsResponse instead (the reason phrase is reported as the name ":status").
let render (status: int, reasonPhrase: string, headers: HttpHeader array) : Rendering =
    let headers = if isNull headers then [||] else headers |> Array.filter (fun h -> not (isNull (box h)))
    let phrase = if String.IsNullOrEmpty reasonPhrase then standardPhrase status else reasonPhrase
    match headers |> Array.tryFind (fun h -> splitsLine (orEmpty h.Name) || splitsLine (orEmpty h.Value)) with
    | Some h -> SplitsResponse(orEmpty h.Name)
    | None when splitsLine phrase -> SplitsResponse ":status"
    | None ->
        let text = StringBuilder(64 + 48 * headers.Length)
        text.Append("HTTP/1.1 ").Append(status).Append(' ').Append(phrase).Append("\r\n") |> ignore
        for h in headers do
            text.Append(orEmpty h.Name).Append(": ").Append(orEmpty h.Value).Append("\r\n") |> ignore
        Rendered(Encoding.Latin1.GetBytes(text.Append("\r\n").ToString()))
