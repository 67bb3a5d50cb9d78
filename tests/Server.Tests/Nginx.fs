/// A private nginx for one test: the README's Deployment block as its whole site, TLS with a
/// self-signed certificate made here, its own folder for the pid file, logs and temp files, a free
/// port on 127.0.0.1. Started with `nginx -c FILE -p DIR -g 'daemon off;'` and stopped by the test.
module Realtime.Server.Tests.Nginx

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Security.Cryptography.X509Certificates
open System.Text
open System.Text.RegularExpressions
open System.Threading.Tasks
open Expecto
open Realtime.Server.Tests.TestHost

/// The nginx configuration of the README's "Deployment" section: its first ```nginx block.
let readmeBlock () =
    let readme = File.ReadAllText(Path.Combine(repositoryRoot, "README.md"))
    let section = readme.IndexOf("## Deployment", StringComparison.Ordinal)
    if section < 0 then failtest "README.md has no \"## Deployment\" section"
    let block = Regex.Match(readme.Substring section, "```nginx\r?\n(.*?)```", RegexOptions.Singleline)
    if not block.Success then failtest "the Deployment section of README.md has no ```nginx block"
    block.Groups[1].Value

/// Replaces the one directive matching `pattern` in `configuration`; fails when there is not exactly one.
let private replaceDirective (pattern: string) (replacement: string) (configuration: string) =
    let matches = Regex.Matches(configuration, pattern, RegexOptions.Multiline)
    if matches.Count <> 1 then failtestf "the README's nginx block has %d lines matching %s, expected one" matches.Count pattern
    Regex.Replace(configuration, pattern, replacement, RegexOptions.Multiline)

/// What a test changes in the README's block.
type Site =
    {
        /// The port nginx listens on (127.0.0.1, TLS).
        Port: int
        /// The port of the app behind it (127.0.0.1, plain HTTP).
        AppPort: int
        /// Replaces the block's proxy_read_timeout and proxy_send_timeout, in seconds.
        Timeout: int option
        /// Lines of the block left out: those that start with one of these (after indentation).
        Without: string list
    }

/// A self-signed certificate for 127.0.0.1 and localhost, with its PEM files for nginx.
let private writeCertificate (folder: string) : X509Certificate2 * string * string =
    use key = ECDsa.Create(ECCurve.NamedCurves.nistP256)
    let request = CertificateRequest("CN=Realtime nginx test", key, HashAlgorithmName.SHA256)
    let names = SubjectAlternativeNameBuilder()
    names.AddIpAddress IPAddress.Loopback
    names.AddDnsName "localhost"
    request.CertificateExtensions.Add(names.Build())
    use certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes -5.0, DateTimeOffset.UtcNow.AddDays 1.0)
    let certificateFile = Path.Combine(folder, "certificate.pem")
    let keyFile = Path.Combine(folder, "key.pem")
    File.WriteAllText(certificateFile, certificate.ExportCertificatePem())
    File.WriteAllText(keyFile, key.ExportPkcs8PrivateKeyPem())
    X509CertificateLoader.LoadCertificate(certificate.RawData), certificateFile, keyFile

/// The whole nginx.conf: the README's block inside an `http` block whose files all stay in `folder`.
let private configuration (folder: string) (site: Site) (certificateFile: string) (keyFile: string) =
    let block =
        readmeBlock ()
        |> replaceDirective @"^(\s*)listen\s+443\s+ssl;" $"$1listen 127.0.0.1:{site.Port} ssl;"
        |> replaceDirective @"^(\s*)server\s+127\.0\.0\.1:5080;" $"$1server 127.0.0.1:{site.AppPort};"
        |> replaceDirective @"^(\s*)ssl_certificate\s+\S+;" $"$1ssl_certificate {certificateFile};"
        |> replaceDirective @"^(\s*)ssl_certificate_key\s+\S+;" $"$1ssl_certificate_key {keyFile};"
        |> fun block ->
            site.Without
            |> List.fold (fun (block: string) start -> replaceDirective ("^\\s*" + Regex.Escape start + ".*\\r?\\n") "" block) block
        |> fun block ->
            match site.Timeout with
            | None -> block
            | Some seconds ->
                block
                |> replaceDirective @"^(\s*)proxy_read_timeout\s+\S+;" $"$1proxy_read_timeout {seconds}s;"
                |> replaceDirective @"^(\s*)proxy_send_timeout\s+\S+;" $"$1proxy_send_timeout {seconds}s;"
    let file name = Path.Combine(folder, name)
    // As root, nginx would run its workers as nobody, who cannot write into this folder.
    let user = if Environment.IsPrivilegedProcess then "user root;\n" else ""
    $"""{user}worker_processes 1;
pid {file "nginx.pid"};
error_log {file "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {file "access.log"};
    client_body_temp_path {file "client_body"};
    proxy_temp_path {file "proxy"};
    fastcgi_temp_path {file "fastcgi"};
    uwsgi_temp_path {file "uwsgi"};
    scgi_temp_path {file "scgi"};
{block}
}}
"""

/// nginx from Debian's package (/usr/sbin is not on every PATH).
let private program = if File.Exists "/usr/sbin/nginx" then "/usr/sbin/nginx" else "nginx"

/// A running nginx of this test. Disposing stops it and removes its folder.
type NginxInstance(folder: string, configurationFile: string, child: Process, output: StringBuilder, certificate: X509Certificate2, port: int) =
    /// The port it listens on (127.0.0.1, TLS).
    member _.Port = port

    /// The certificate it presents.
    member _.Certificate = certificate

    /// Its error log and what it printed, for failure messages.
    member _.Diagnostics =
        let log = Path.Combine(folder, "error.log")
        let errors = if File.Exists log then File.ReadAllText log else "(no error log)"
        $"nginx output:\n{output}\nerror.log:\n{errors}"

    /// Asks nginx to stop (fast shutdown: open WebSockets are closed), waits at most 10 s, then kills it.
    member _.Stop() =
        if not child.HasExited then
            try
                let info = ProcessStartInfo(program, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
                for argument in [ "-c"; configurationFile; "-p"; folder; "-e"; Path.Combine(folder, "error.log"); "-s"; "stop" ] do
                    info.ArgumentList.Add argument
                use signal = Process.Start info
                signal.WaitForExit 10_000 |> ignore
            with _ -> ()
            if not (child.WaitForExit 10_000) then stopProcess child
        child.Dispose()
        try Directory.Delete(folder, true) with _ -> ()

    interface IDisposable with
        member this.Dispose() = this.Stop()

/// Starts nginx for `site` and waits (at most 10 s) until it accepts connections.
let start (site: Site) : Task<NginxInstance> =
    task {
        let folder = Path.Combine(Path.GetTempPath(), $"realtime-nginx-{Environment.ProcessId}-{site.Port}")
        Directory.CreateDirectory folder |> ignore
        let certificate, certificateFile, keyFile = writeCertificate folder
        let configurationFile = Path.Combine(folder, "nginx.conf")
        File.WriteAllText(configurationFile, configuration folder site certificateFile keyFile)
        let info = ProcessStartInfo(program, UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true)
        for argument in [ "-c"; configurationFile; "-p"; folder; "-e"; Path.Combine(folder, "error.log"); "-g"; "daemon off;" ] do
            info.ArgumentList.Add argument
        let output = StringBuilder()
        let collect (line: string) = if not (isNull line) then lock output (fun () -> output.AppendLine line |> ignore)
        let child =
            try
                Process.Start info
            with :? ComponentModel.Win32Exception ->
                failtest "nginx is not installed (apt-get install nginx)"
        child.OutputDataReceived.Add(fun args -> collect args.Data)
        child.ErrorDataReceived.Add(fun args -> collect args.Data)
        child.BeginOutputReadLine()
        child.BeginErrorReadLine()
        let instance = new NginxInstance(folder, configurationFile, child, output, certificate, site.Port)
        let deadline = DateTime.UtcNow.AddSeconds 10.0
        let mutable listening = false
        while not listening && DateTime.UtcNow < deadline && not child.HasExited do
            try
                use probe = new TcpClient()
                do! probe.ConnectAsync(IPAddress.Loopback, site.Port)
                listening <- true
            with _ ->
                do! Task.Delay 50
        if not listening then
            let diagnostics = instance.Diagnostics
            instance.Stop()
            failtestf "nginx did not listen on %d within 10 s:\n%s" site.Port diagnostics
        return instance
    }
