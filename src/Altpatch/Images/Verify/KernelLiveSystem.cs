using System.Globalization;

namespace Altpatch.Images.Verify;

/// <summary>
/// What <c>kernel verify --live</c> reads of the machine it runs on: the running kernel's release, its image
/// (<c>/boot/vmlinuz-$(uname -r)</c>), <c>/proc/cpuinfo</c>, <c>/proc/cmdline</c>, where <c>.text</c> is
/// (<c>_stext</c> in <c>/proc/kallsyms</c>) and its bytes (<c>/proc/kcore</c>). Each reader refuses with a
/// <see cref="KernelVerifyException"/> that says why and what to do instead.
/// </summary>
/// <param name="procRoot">Where proc is mounted (tests point this at a directory of files).</param>
/// <param name="bootDirectory">Where the kernel images are.</param>
/// <param name="isRoot">Whether the process may read <c>/proc/kcore</c> (euid 0).</param>
public sealed class KernelLiveSystem(string procRoot, string bootDirectory, bool isRoot)
{
    /// <summary>This machine: /proc, /boot, and the process's own privilege.</summary>
    public static KernelLiveSystem Current => new("/proc", "/boot", Environment.IsPrivilegedProcess);

    /// <summary>Where proc is mounted.</summary>
    public string ProcRoot { get; } = procRoot;

    /// <summary>Where the kernel images are.</summary>
    public string BootDirectory { get; } = bootDirectory;

    /// <summary>Whether the process runs as root.</summary>
    public bool IsRoot { get; } = isRoot;

    /// <summary><c>/proc/kcore</c>.</summary>
    public string KcorePath => Path.Combine(ProcRoot, "kcore");

    /// <summary>The running kernel's release (<c>uname -r</c>, from <c>/proc/sys/kernel/osrelease</c>).</summary>
    /// <exception cref="KernelVerifyException">It cannot be read.</exception>
    public string Release
    {
        get
        {
            var path = Path.Combine(ProcRoot, "sys", "kernel", "osrelease");
            return File.Exists(path)
                ? File.ReadAllText(path).Trim()
                : throw new KernelVerifyException($"--live: cannot read the running kernel's release: no {path} (is /proc mounted?)");
        }
    }

    /// <summary>Refuses unless the process can read the running kernel's memory: root, and a <c>/proc/kcore</c>.</summary>
    /// <exception cref="KernelVerifyException">Not root, or no <c>/proc/kcore</c>.</exception>
    public void CheckAccess()
    {
        if (!IsRoot)
            throw new KernelVerifyException($"--live reads the running kernel's text from {KcorePath}, which only root may read: run it as root (sudo), or verify a saved dump with --text or --memory");
        if (!File.Exists(KcorePath))
            throw new KernelVerifyException($"--live: no {KcorePath}: this kernel was built without CONFIG_PROC_KCORE (or /proc is not mounted); dump the text another way and use --text or --memory");
    }

    /// <summary>The running kernel's image: <c>/boot/vmlinuz-RELEASE</c>.</summary>
    /// <exception cref="KernelVerifyException">There is no such file.</exception>
    public string ImagePath()
    {
        var release = Release;
        var path = Path.Combine(BootDirectory, "vmlinuz-" + release);
        return File.Exists(path)
            ? path
            : throw new KernelVerifyException($"--live: no image of the running kernel {release}: {path} does not exist; give the image as IMAGE");
    }

    /// <summary>The text of <c>/proc/cpuinfo</c>.</summary>
    /// <exception cref="KernelVerifyException">It cannot be read.</exception>
    public string CpuInfo() => ReadProc("cpuinfo");

    /// <summary>The running kernel's command line (<c>/proc/cmdline</c>).</summary>
    /// <exception cref="KernelVerifyException">It cannot be read.</exception>
    public string CommandLine() => ReadProc("cmdline").Trim();

    /// <summary>The runtime address of <c>.text</c>: <c>_stext</c> (or <c>_text</c>) in <c>/proc/kallsyms</c>.</summary>
    /// <exception cref="KernelVerifyException">The file cannot be read, names neither symbol, or shows its addresses as 0
    /// (<c>kptr_restrict</c>).</exception>
    public ulong TextAddress()
    {
        var path = Path.Combine(ProcRoot, "kallsyms");
        if (!File.Exists(path))
            throw new KernelVerifyException($"--live: no {path} (a kernel without CONFIG_KALLSYMS): find .text in the core with --memory {KcorePath} instead");
        ulong? text = null, stext = null;
        foreach (var line in File.ReadLines(path))
        {
            // "ffffffff81000000 T _stext"
            var parts = line.Split(' ', 4, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length < 3 || (parts[2] != "_stext" && parts[2] != "_text"))
                continue;
            if (!ulong.TryParse(parts[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong a))
                throw new KernelVerifyException($"--live: {path}: '{line}' has no address");
            if (parts[2] == "_stext")
                stext = a;
            else
                text = a;
            if (stext is not null)
                break;
        }
        ulong? found = stext ?? text;
        if (found is null)
            throw new KernelVerifyException($"--live: {path} names neither _stext nor _text");
        if (found == 0)
            throw new KernelVerifyException(
                $"--live: {path} shows kernel addresses as 0 (kernel.kptr_restrict hides them): run as root with kptr_restrict at most 1 (sysctl kernel.kptr_restrict=1), or find .text in the core with --memory {KcorePath}");
        return found.Value;
    }

    /// <summary>Refuses an image that is not the running kernel's build: its version string must name the running release.</summary>
    /// <exception cref="KernelVerifyException">The releases differ, or the image has no version string.</exception>
    public void CheckImage(KernelImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var release = Release;
        if (image.Version?.Release is not { } r)
            throw new KernelVerifyException($"--live: {image.Name} has no version string, so it cannot be matched with the running kernel {release}");
        if (r != release)
            throw new KernelVerifyException($"--live: {image.Name} is Linux {r}, the running kernel is {release}: give the running kernel's image");
    }

    /// <summary>The running kernel's <c>.text</c>: its address from <see cref="TextAddress"/>, its bytes from
    /// <c>/proc/kcore</c>.</summary>
    /// <param name="image">The running kernel's image (for the size of <c>.text</c>).</param>
    /// <exception cref="KernelVerifyException">Not root, no kcore or kallsyms, addresses hidden, or kcore does not cover
    /// the text.</exception>
    /// <exception cref="ImageFormatException">kcore is not an ELF core file.</exception>
    public (byte[] Text, ulong Address) ReadText(KernelImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        CheckAccess();
        ulong at = TextAddress();
        var size = KernelTextLocator.TextSection(image).Size;
        ElfCore core;
        try
        {
            core = ElfCore.Open(KcorePath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KernelVerifyException($"--live: cannot open {KcorePath}: {e.Message} (kernel lockdown in confidentiality mode blocks it; integrity mode does not)");
        }
        using (core)
        {
            var text = new byte[size];
            if (!core.TryRead(at, text))
                throw new KernelVerifyException($"--live: {KcorePath} has no segment holding .text at 0x{at:x} (+0x{size:x} bytes)");
            return (text, at);
        }
    }

    private string ReadProc(string name)
    {
        var path = Path.Combine(ProcRoot, name);
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KernelVerifyException($"--live: cannot read {path}: {e.Message}");
        }
    }
}
