// Peer server for the Realtime benchmarks: Bun.serve websockets, the same contract as samples/Echo.
//   /echo    every message goes back to its sender, same kind, same bytes.
//   /fanout  every message goes to every OTHER /fanout connection: ws.publish skips the sender.
// Usage: npx bun server.ts --port PORT [--tls CERT.pem KEY.pem]
// permessage-deflate: perMessageDeflate: true accepts offers (Bun uses a shared compressor, no
// context takeover); sends on such a connection are compressed.
const args = Bun.argv.slice(2);
const port = Number(args[args.indexOf("--port") + 1] || 8080);
const tlsAt = args.indexOf("--tls");

type Data = { path: string; deflate: boolean };

const server = Bun.serve<Data, {}>({
  hostname: "127.0.0.1",
  port,
  tls: tlsAt >= 0 ? { cert: Bun.file(args[tlsAt + 1]), key: Bun.file(args[tlsAt + 2]) } : undefined,
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (path === "/echo" || path === "/fanout") {
      const deflate = (req.headers.get("sec-websocket-extensions") ?? "").includes("permessage-deflate");
      if (server.upgrade(req, { data: { path, deflate } })) return undefined;
      return new Response("upgrade failed", { status: 400 });
    }
    return new Response("bun echo server: /echo and /fanout");
  },
  websocket: {
    perMessageDeflate: true,
    maxPayloadLength: 64 * 1024 * 1024,
    backpressureLimit: 16 * 1024 * 1024,
    idleTimeout: 0,
    open(ws) {
      if (ws.data.path === "/fanout") ws.subscribe("fanout");
    },
    message(ws, message) {
      // Compress when the connection negotiated permessage-deflate (the load generator's
      // compressed runs send everything compressed and expect compressed replies).
      const compress = ws.data.deflate;
      if (ws.data.path === "/echo") ws.send(message, compress);
      else ws.publish("fanout", message, compress);
    },
  },
});
console.log(`bun listening on ${server.port}`);
