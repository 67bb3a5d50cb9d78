/// Durations, and waiting for a condition with a bounded timeout instead of sleeping.
module Realtime.Server.Tests.Timing

open System
open System.Threading.Tasks
open Expecto
open Realtime.Server.Tests.TestHost

/// A duration of so many seconds.
let seconds (value: float) = TimeSpan.FromSeconds value

/// A duration of so many milliseconds.
let millis (value: float) = TimeSpan.FromMilliseconds value

/// Fails unless the condition holds within the time.
let expectEventually (timeout: TimeSpan) (message: string) (condition: unit -> bool) : Task =
    task {
        let! ok = eventually timeout condition
        if not ok then failtest message
    }
