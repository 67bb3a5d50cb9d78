/// The shipped assemblies' public surface, compared with the checked-in PublicAPI.txt files, and the
/// F# core's XML documentation (the F# compiler does not require it; the C# host fails its build on
/// a missing doc comment, CS1591 with warnings as errors).
module Realtime.Server.Tests.PublicApiTests

open System
open System.IO
open System.Reflection
open System.Runtime.CompilerServices
open System.Xml.Linq
open Expecto
open Microsoft.FSharp.Core
open Microsoft.FSharp.Reflection
open Realtime.Server.Tests.TestHost

/// The environment variable that makes the test rewrite the PublicAPI.txt files instead of failing.
let updateVariable = "UPDATE_PUBLIC_API"

let private protocolAssembly = typeof<Realtime.Protocol.FrameHeader>.Assembly
let private serverAssembly = typeof<Realtime.IRealtimeServer>.Assembly
let private redisAssembly = typeof<Realtime.Redis.RedisBackplane>.Assembly
let private devServerAssembly = typeof<Realtime.RealtimeDevServer>.Assembly
let private channelsAssembly = typeof<Realtime.Channels.IChannelStore>.Assembly
let private channelsRedisAssembly = typeof<Realtime.Channels.Redis.RedisChannelStore>.Assembly

// ---------------------------------------------------------------------------------------------
// The public surface as text: one line per type and per member, sorted.

let private keywords =
    dict [
        typeof<Void>, "void"; typeof<obj>, "object"; typeof<string>, "string"; typeof<bool>, "bool"
        typeof<byte>, "byte"; typeof<sbyte>, "sbyte"; typeof<int16>, "short"; typeof<uint16>, "ushort"
        typeof<int>, "int"; typeof<uint32>, "uint"; typeof<int64>, "long"; typeof<uint64>, "ulong"
        typeof<float32>, "float"; typeof<float>, "double"; typeof<decimal>, "decimal"; typeof<char>, "char"
        typeof<nativeint>, "nint"; typeof<unativeint>, "nuint"
    ]

let private stripArity (name: string) =
    match name.IndexOf '`' with
    | -1 -> name
    | i -> name.Substring(0, i)

/// A type as C# would spell it, with namespaces: System.ReadOnlySpan<byte>, Realtime.RealtimeSocket<TData>.
let rec private typeName (t: Type) : string =
    if t.IsByRef then typeName (t.GetElementType())
    elif t.IsPointer then typeName (t.GetElementType()) + "*"
    elif t.IsArray then typeName (t.GetElementType()) + "[" + String(',', t.GetArrayRank() - 1) + "]"
    elif t.IsGenericParameter then t.Name
    elif keywords.ContainsKey t then keywords[t]
    elif t.IsGenericType && t.GetGenericTypeDefinition() = typedefof<Nullable<_>> then typeName (t.GetGenericArguments()[0]) + "?"
    else
        let args = if t.IsGenericType then t.GetGenericArguments() else [||]
        let outerCount, outer =
            if t.IsNested then
                let declaring = t.DeclaringType
                let count = if declaring.IsGenericTypeDefinition then declaring.GetGenericArguments().Length else 0
                let declaringShown =
                    if count = 0 then declaring
                    elif t.IsGenericTypeDefinition then declaring
                    else declaring.MakeGenericType(args[.. count - 1])
                count, typeName declaringShown + "."
            else
                0, (if String.IsNullOrEmpty t.Namespace then "" else t.Namespace + ".")
        let own = args[outerCount..]
        let generic = if own.Length = 0 then "" else "<" + String.Join(", ", own |> Array.map typeName) + ">"
        outer + stripArity t.Name + generic

/// C#'s "?" on a reference type annotated as nullable (top level only; F# has no annotations).
let private nullable (t: Type) (state: NullabilityState) =
    if not t.IsValueType && not t.IsByRef && not t.IsGenericParameter && state = NullabilityState.Nullable then "?" else ""

let private parameterType (p: ParameterInfo) =
    let t = if p.ParameterType.IsByRef then p.ParameterType.GetElementType() else p.ParameterType
    let info = NullabilityInfoContext().Create p
    let state = if p.IsOut then info.WriteState else info.ReadState
    typeName p.ParameterType + nullable t state

let private isVisible (m: MethodBase) = not (isNull m) && (m.IsPublic || m.IsFamily || m.IsFamilyOrAssembly)

let private access (m: MethodBase) = if m.IsPublic then "" else "protected "

let private literal (value: obj) =
    match value with
    | null -> "null"
    | :? string as s -> "\"" + s + "\""
    | :? bool as b -> (if b then "true" else "false")
    | :? char as c -> $"'{c}'"
    | v -> Convert.ToString(v, Globalization.CultureInfo.InvariantCulture)

let private parameter (p: ParameterInfo) =
    let modifier =
        if p.ParameterType.IsByRef then (if p.IsOut then "out " elif p.IsIn then "in " else "ref ")
        elif p.IsDefined(typeof<ParamArrayAttribute>) then "params "
        else ""
    let defaultValue = if p.HasDefaultValue then " = " + literal p.RawDefaultValue else ""
    let this = if p.Position = 0 && p.Member.IsDefined(typeof<ExtensionAttribute>) then "this " else ""
    this + modifier + parameterType p + " " + p.Name + defaultValue

let private parameters (ps: ParameterInfo[]) = String.Join(", ", ps |> Array.map parameter)

let private genericArguments (m: MethodInfo) =
    if m.IsGenericMethodDefinition then "<" + String.Join(", ", m.GetGenericArguments() |> Array.map (fun a -> a.Name)) + ">" else ""

let private methodModifiers (m: MethodInfo) =
    if m.IsStatic then "static "
    elif m.DeclaringType.IsInterface then (if m.IsAbstract then "" else "virtual ")
    elif m.IsAbstract then "abstract "
    elif m.IsVirtual && not m.IsFinal then
        if m.GetBaseDefinition().DeclaringType <> m.DeclaringType then "override " else "virtual "
    else ""

let private isInitOnly (setter: MethodInfo) =
    setter.ReturnParameter.GetRequiredCustomModifiers() |> Array.exists (fun t -> t.FullName = "System.Runtime.CompilerServices.IsExternalInit")

let private typeHeader (t: Type) =
    let kind =
        if t.IsEnum then "enum"
        elif t.IsInterface then "interface"
        elif t.IsValueType then (if t.IsDefined(typeof<IsReadOnlyAttribute>) then "readonly struct" else "struct")
        elif t.IsSubclassOf typeof<Delegate> then "delegate"
        elif t.IsAbstract && t.IsSealed then "static class"
        elif t.IsAbstract then "abstract class"
        elif t.IsSealed then "sealed class"
        else "class"
    let bases =
        [ if not (isNull t.BaseType) && t.BaseType <> typeof<obj> && t.BaseType <> typeof<ValueType> && t.BaseType <> typeof<Enum> then
              typeName t.BaseType
          if t.IsEnum then typeName (Enum.GetUnderlyingType t)
          // An enum's interfaces come from System.Enum and change with the runtime, not with us.
          if not t.IsEnum then
              yield! t.GetInterfaces() |> Array.filter (fun i -> i.IsPublic || i.IsNestedPublic) |> Array.map typeName |> Array.sort ]
    (if t.IsNested && t.IsNestedFamily then "protected " else "") + kind + " " + typeName t
    + (if bases.IsEmpty then "" else " : " + String.Join(", ", bases))

let private memberLines (t: Type) : string list =
    let flags = BindingFlags.Public ||| BindingFlags.NonPublic ||| BindingFlags.Instance ||| BindingFlags.Static ||| BindingFlags.DeclaredOnly
    let properties = t.GetProperties flags
    let events = t.GetEvents flags
    let accessors =
        set [ for p in properties do
                  for a in p.GetAccessors true -> a.MetadataToken
              for e in events do
                  for a in [ e.AddMethod; e.RemoveMethod; e.RaiseMethod ] do
                      if not (isNull a) then yield a.MetadataToken ]
    [ if t.IsEnum then
          for f in t.GetFields(BindingFlags.Public ||| BindingFlags.Static) do
              $"{f.Name} = {literal (f.GetRawConstantValue())}"
      elif t.IsSubclassOf typeof<Delegate> then
          let invoke = t.GetMethod "Invoke"
          $"{typeName invoke.ReturnType} Invoke({parameters (invoke.GetParameters())})"
      else
          for c in t.GetConstructors flags do
              if isVisible c then
                  let modifier = if c.IsStatic then "static " else ""
                  $"{access c}{modifier}.ctor({parameters (c.GetParameters())})"
          for m in t.GetMethods flags do
              if isVisible m && not (accessors.Contains m.MetadataToken) then
                  let returns = parameterType m.ReturnParameter
                  $"{access m}{methodModifiers m}{returns} {m.Name}{genericArguments m}({parameters (m.GetParameters())})"
          for p in properties do
              let getter = p.GetMethod
              let setter = p.SetMethod
              let shown = [ getter; setter ] |> List.filter isVisible
              if not shown.IsEmpty then
                  let first = shown.Head
                  let index = p.GetIndexParameters()
                  let name = if index.Length = 0 then p.Name else $"this[{parameters index}]"
                  let accessorText =
                      [ if isVisible getter then (if getter.IsPublic then "get;" else "protected get;")
                        if isVisible setter then
                            let word = if isInitOnly setter then "init;" else "set;"
                            (if setter.IsPublic then word else "protected " + word) ]
                  let accessorsShown = String.Join(" ", accessorText)
                  let propertyType = typeName p.PropertyType + nullable p.PropertyType (NullabilityInfoContext().Create(p).ReadState)
                  $"{access first}{methodModifiers first}{propertyType} {name} {{ {accessorsShown} }}"
          for f in t.GetFields flags do
              if (f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly) && not f.IsSpecialName then
                  let modifiers =
                      if f.IsLiteral then "const "
                      elif f.IsStatic && f.IsInitOnly then "static readonly "
                      elif f.IsStatic then "static "
                      elif f.IsInitOnly then "readonly "
                      else ""
                  let value = if f.IsLiteral then " = " + literal (f.GetRawConstantValue()) else ""
                  let fieldType = typeName f.FieldType + nullable f.FieldType (NullabilityInfoContext().Create(f).ReadState)
                  $"""{(if f.IsPublic then "" else "protected ")}{modifiers}{fieldType} {f.Name}{value}"""
          for e in events do
              if isVisible e.AddMethod then $"{access e.AddMethod}event {typeName e.EventHandlerType} {e.Name}" ]
    |> List.sortWith (fun a b -> String.CompareOrdinal(a, b))

/// The assembly's public surface as deterministic text: each visible type's header line, then its
/// members indented; types in ordinal order of their names, members in ordinal order of their lines.
let describe (assembly: Assembly) : string =
    let types =
        assembly.GetExportedTypes()
        |> Array.filter (fun t -> not t.IsNested || t.IsNestedPublic || t.IsNestedFamily)
        |> Array.sortWith (fun a b -> String.CompareOrdinal(typeName a, typeName b))
        |> Array.map (fun t -> typeHeader t, t)
    let lines =
        [ for header, t in types do
              yield header
              for line in memberLines t -> "  " + line ]
    String.Join("\n", lines) + "\n"

/// Splits the surface text into blocks: a type's header line and its member lines.
let private blocks (text: string) : (string * string list) list =
    let lines = text.Replace("\r\n", "\n").Split('\n', StringSplitOptions.RemoveEmptyEntries)
    [ let mutable header = None
      let members = Collections.Generic.List<string>()
      for line in lines do
          if line.StartsWith "  " then members.Add(line.Trim())
          else
              match header with
              | Some h -> yield h, List.ofSeq members
              | None -> ()
              header <- Some line
              members.Clear()
      match header with
      | Some h -> yield h, List.ofSeq members
      | None -> () ]

/// A readable diff by type: types only in the file (-) or only in the assembly (+), and for types
/// in both, the members that differ.
let private diff (expected: string) (actual: string) =
    let before = blocks expected |> Map.ofList
    let after = blocks actual |> Map.ofList
    let headers = Set.union (before.Keys |> Set.ofSeq) (after.Keys |> Set.ofSeq) |> Set.toList |> List.sortWith (fun a b -> String.CompareOrdinal(a, b))
    let lines =
        [ for header in headers do
              match before.TryFind header, after.TryFind header with
              | Some _, None -> yield "- " + header
              | None, Some members ->
                  yield "+ " + header
                  for m in members -> "+     " + m
              | Some old, Some now when old <> now ->
                  yield "  " + header
                  for m in old do
                      if not (List.contains m now) then yield "-     " + m
                  for m in now do
                      if not (List.contains m old) then yield "+     " + m
              | _ -> () ]
    String.Join("\n", lines)

let private checkSurface (assembly: Assembly) (relativePath: string) =
    let path = Path.Combine(repositoryRoot, relativePath)
    let actual = describe assembly
    if Environment.GetEnvironmentVariable updateVariable = "1" then
        File.WriteAllText(path, actual)
    else
        let expected = if File.Exists path then File.ReadAllText(path).Replace("\r\n", "\n") else ""
        if expected <> actual then
            failtestf
                "The public API of %s differs from %s (- only in the file, + only in the assembly):\n%s\n\nIf the change is intended, run the tests with %s=1 to rewrite the file, and review its diff before committing:\n  %s=1 dotnet run --project tests/Server.Tests -- --filter-test-list \"Public API\""
                (assembly.GetName().Name) relativePath (diff expected actual) updateVariable updateVariable

// ---------------------------------------------------------------------------------------------
// XML documentation ids (ECMA-334 annex D, as the F# compiler writes them).

let rec private idType (t: Type) : string =
    if t.IsGenericParameter then
        (if isNull t.DeclaringMethod then "`" else "``") + string t.GenericParameterPosition
    elif t.IsByRef then idType (t.GetElementType()) + "@"
    elif t.IsPointer then idType (t.GetElementType()) + "*"
    elif t.IsArray then
        idType (t.GetElementType()) + (if t.GetArrayRank() = 1 then "[]" else "[" + String.Join(",", Array.create (t.GetArrayRank()) "0:") + "]")
    elif t.IsGenericType && not t.IsGenericTypeDefinition then
        let definition = t.GetGenericTypeDefinition()
        let name = definition.FullName.Replace('+', '.')
        stripArity name + "{" + String.Join(",", t.GetGenericArguments() |> Array.map idType) + "}"
    else t.FullName.Replace('+', '.')

let private typeId (t: Type) = t.FullName.Replace('+', '.')

let private methodId (m: MethodBase) =
    let name = if m.IsConstructor then "#ctor" else m.Name
    let arity = if m.IsGenericMethodDefinition then "``" + string (m.GetGenericArguments().Length) else ""
    let ps = m.GetParameters()
    let args = if ps.Length = 0 then "" else "(" + String.Join(",", ps |> Array.map (fun p -> idType p.ParameterType)) + ")"
    let conversion =
        match m with
        | :? MethodInfo as mi when m.Name = "op_Implicit" || m.Name = "op_Explicit" -> "~" + idType mi.ReturnType
        | _ -> ""
    $"M:{typeId m.DeclaringType}.{name}{arity}{args}{conversion}"

let private hasMapping (flag: SourceConstructFlags) (m: MemberInfo) =
    m.GetCustomAttributes<CompilationMappingAttribute>() |> Seq.exists (fun a -> a.SourceConstructFlags &&& SourceConstructFlags.KindMask = flag)

let private isGenerated (m: MemberInfo) = m.IsDefined(typeof<CompilerGeneratedAttribute>)

/// Every documentable public item of the F# core, as (doc id, readable name): types, union cases,
/// record fields, enum values, module functions and values, members. Compiler-made members
/// (union testers and constructors, Tag, equality and comparison) are left out.
let private documentable (assembly: Assembly) : (string * string) list =
    let flags = BindingFlags.Public ||| BindingFlags.Instance ||| BindingFlags.Static ||| BindingFlags.DeclaredOnly
    [ for t in assembly.GetExportedTypes() do
          // A union's cases with fields are nested subclasses of it; they are documented as cases.
          let isUnionCaseClass = not (isNull t.DeclaringType) && t.BaseType = t.DeclaringType && FSharpType.IsUnion(t.DeclaringType, true)
          let isUnion = FSharpType.IsUnion(t, true) && not isUnionCaseClass
          let isRecord = FSharpType.IsRecord(t, true)
          let isTags = t.Name = "Tags" && not (isNull t.DeclaringType) && FSharpType.IsUnion(t.DeclaringType, true)
          if not isTags && not isUnionCaseClass then
              yield typeId t, typeName t
              if isUnion then
                  for case in FSharpType.GetUnionCases(t, true) do
                      yield $"T:{typeId t}.{case.Name}", $"{typeName t}.{case.Name} (union case)"
              if t.IsEnum then
                  for f in t.GetFields(BindingFlags.Public ||| BindingFlags.Static) do
                      yield $"F:{typeId t}.{f.Name}", $"{typeName t}.{f.Name}"
              elif not (t.IsSubclassOf typeof<Delegate>) then
                  let properties = t.GetProperties flags
                  let accessors = set [ for p in properties do for a in p.GetAccessors() -> a.MetadataToken ]
                  for p in properties do
                      let unionField = isUnion && hasMapping SourceConstructFlags.Field p
                      let unionTester = isUnion && (p.Name = "Tag" || (p.Name.StartsWith "Is" && isGenerated p))
                      if not unionField && not unionTester && not (isGenerated p) && not (isNull p.GetMethod) && p.GetMethod.IsPublic then
                          yield $"P:{typeId t}.{p.Name}", $"{typeName t}.{p.Name}"
                  for m in t.GetMethods flags do
                      let unionConstructor = isUnion && hasMapping SourceConstructFlags.UnionCase m
                      let generated = isGenerated m
                      if m.IsPublic && not (accessors.Contains m.MetadataToken) && not unionConstructor && not generated then
                          yield methodId m, $"{typeName t}.{m.Name}"
                  if not isUnion && not isRecord then
                      for c in t.GetConstructors(BindingFlags.Public ||| BindingFlags.Instance) do
                          if not (isGenerated c) then yield methodId c, $"{typeName t} constructor" ]
    |> List.map (fun (id, name) -> (if id.Contains ':' then id else "T:" + id), name)
    |> List.distinct

let private documentationFile (assembly: Assembly) =
    let beside = Path.ChangeExtension(assembly.Location, ".xml")
    if File.Exists beside then beside
    else failwithf "%s not found: the project must set GenerateDocumentationFile" beside

/// The items of `assembly` whose documentation file has no non-empty <summary> for them.
let undocumented (assembly: Assembly) : string list =
    let document = XDocument.Load(documentationFile assembly)
    let summaries =
        document.Descendants(XName.Get "member")
        |> Seq.filter (fun m ->
            let summary = m.Element(XName.Get "summary")
            not (isNull summary) && not (String.IsNullOrWhiteSpace summary.Value))
        |> Seq.map (fun m -> m.Attribute(XName.Get "name").Value)
        |> Set.ofSeq
    documentable assembly
    |> List.filter (fun (id, _) -> not (summaries.Contains id))
    |> List.map (fun (id, name) -> $"{name}  ({id})")
    |> List.sort

[<Tests>]
let tests =
    testList "Public API" [
        testCase "Realtime.Protocol's public surface matches src/Protocol.FSharp/PublicAPI.txt" (fun () ->
            checkSurface protocolAssembly "src/Protocol.FSharp/PublicAPI.txt")
        testCase "Realtime.Server's public surface matches src/Server.CSharp/PublicAPI.txt" (fun () ->
            checkSurface serverAssembly "src/Server.CSharp/PublicAPI.txt")
        testCase "Realtime.Redis's public surface matches src/Redis.CSharp/PublicAPI.txt" (fun () ->
            checkSurface redisAssembly "src/Redis.CSharp/PublicAPI.txt")
        testCase "Realtime.DevServer's public surface matches src/DevServer.CSharp/PublicAPI.txt" (fun () ->
            checkSurface devServerAssembly "src/DevServer.CSharp/PublicAPI.txt")
        testCase "Realtime.Channels's public surface matches src/Channels.CSharp/PublicAPI.txt" (fun () ->
            checkSurface channelsAssembly "src/Channels.CSharp/PublicAPI.txt")
        testCase "Realtime.Channels.Redis's public surface matches src/ChannelsRedis.CSharp/PublicAPI.txt" (fun () ->
            checkSurface channelsRedisAssembly "src/ChannelsRedis.CSharp/PublicAPI.txt")
        testCase "the surface text is deterministic and names members with their signatures" (fun () ->
            let text = describe serverAssembly
            Expect.equal (describe serverAssembly) text "same text twice"
            Expect.stringContains text "sealed class Realtime.RealtimeSocket<TData> : Realtime.RealtimeSocket" "a generic type and its base"
            Expect.stringContains text "  Realtime.SendResult Send(string text, bool compress = false)" "a method with parameter names and defaults"
            Expect.isFalse (text.Contains "class Realtime.RealtimeServer") "internal types are not part of it")
        testCase "every public type and member of Realtime.Protocol has a <summary> in Realtime.Protocol.xml" (fun () ->
            let items = documentable protocolAssembly
            Expect.isGreaterThan items.Length 100 "the check sees the core's items"
            let missing = undocumented protocolAssembly
            if not missing.IsEmpty then
                failtestf "%d public items of Realtime.Protocol have no /// summary:\n  %s" missing.Length (String.Join("\n  ", missing)))
    ]
