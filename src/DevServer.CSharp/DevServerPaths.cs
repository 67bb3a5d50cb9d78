namespace Realtime.DevServer;

/// <summary>
/// Which files of the folder the dev server may serve: none whose path has a name starting with a
/// dot (<c>.git</c>, <c>.env</c>, <c>.ssh</c>), and none reached through a symbolic link that leads
/// out of the folder.
/// </summary>
internal sealed class DevServerPaths
{
    // Bounds the links followed for one path, as the kernel's ELOOP does (40 on Linux).
    private const int MaxLinks = 40;

    private readonly string _root;

    public DevServerPaths(string rootPath)
    {
        _root = RealPath(rootPath) ?? Path.GetFullPath(rootPath);
    }

    /// <summary>True when a segment of the request path (already percent-decoded) starts with a dot.</summary>
    public static bool HasDotSegment(string requestPath)
    {
        foreach (var segment in requestPath.Split('/'))
            if (segment.StartsWith('.')) return true;
        return false;
    }

    /// <summary>True when <paramref name="physicalPath"/>, with every symbolic link on the way resolved, is inside the folder.</summary>
    public bool IsInside(string physicalPath)
    {
        string? real = RealPath(physicalPath);
        if (real is null) return false;
        return real == _root || real.StartsWith(_root.EndsWith(Path.DirectorySeparatorChar) ? _root : _root + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }

    /// <summary>
    /// The path with every symbolic link resolved, component by component from the file-system
    /// root (what realpath(3) gives); null for a loop or more than <see cref="MaxLinks"/> links.
    /// </summary>
    internal static string? RealPath(string path)
    {
        var pending = new Stack<string>();
        PushComponents(pending, Path.GetFullPath(path));
        string current = Path.GetPathRoot(Path.GetFullPath(path)) ?? "/";
        int links = 0;
        while (pending.Count > 0)
        {
            string name = pending.Pop();
            if (name == ".") continue;
            if (name == "..")
            {
                current = Path.GetDirectoryName(current) ?? current;
                continue;
            }
            string next = Path.Combine(current, name);
            string? target;
            try
            {
                target = new FileInfo(next).LinkTarget;
            }
            catch (IOException)
            {
                target = null;
            }
            catch (UnauthorizedAccessException)
            {
                return null;
            }
            if (target is null)
            {
                current = next;
                continue;
            }
            if (++links > MaxLinks) return null;
            if (Path.IsPathRooted(target)) current = Path.GetPathRoot(target) ?? "/";
            PushComponents(pending, target);
        }
        return current;
    }

    // Pushes the names of a path so that its first name is popped first.
    private static void PushComponents(Stack<string> pending, string path)
    {
        var names = path.Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        for (int i = names.Length - 1; i >= 0; i--) pending.Push(names[i]);
    }
}
