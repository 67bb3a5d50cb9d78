namespace Realtime.Server;
