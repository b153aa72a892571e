using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using Altpatch.Images;

namespace Altpatch.Fuzz;

/// <summary>
/// Writes the seed corpus of every target from the real images (../shared/linux): small slices of them, never
/// whole images. The bzImage and payload seeds wrap a miniature of the real vmlinux (its ELF header and section
/// headers, each section cut to a few hundred bytes) in the real setup code, compressed by each codec the machine
/// has a tool for; the table seeds are the first entries of the real tables; the cpuinfo seeds are the recorded
/// QEMU CPUs of tests/data/groundtruth.
/// </summary>
public static class SeedCorpus
{
    /// <summary>Writes DIR/TARGET/seed-* for every target.</summary>
    public static void Write(string dir)
    {
        var amd64Path = Path.Combine(ImageFrame.SharedLinux, "vmlinuz-6.1.0-50-cloud-amd64");
        var i386Path = Path.Combine(ImageFrame.SharedLinux, "vmlinuz-6.1.0-50-686");
        var amd64File = File.ReadAllBytes(amd64Path);
        var amd64 = ImageFrame.Amd64;
        var i386 = ImageFrame.I386;
        int count = 0;
        void Seed(string target, string name, byte[] bytes)
        {
            var d = Path.Combine(dir, target);
            Directory.CreateDirectory(d);
            File.WriteAllBytes(Path.Combine(d, $"seed-{name}"), bytes);
            count++;
        }

        // ELF: miniatures of both vmlinux files, with and without program headers.
        var miniAmd64 = MiniElf(amd64.Image.Elf, 256, keepSegments: false);
        var miniI386 = MiniElf(i386.Image.Elf, 256, keepSegments: false);
        Seed("elf", "amd64", miniAmd64);
        Seed("elf", "i386", miniI386);
        Seed("elf", "amd64-phdrs", MiniElf(amd64.Image.Elf, 64, keepSegments: true));

        // Payloads: the miniature compressed by every codec at hand, and the head of each real payload.
        foreach (var codec in Enum.GetValues<PayloadCompression>().Where(c => c != PayloadCompression.None))
        {
            if (Compress(codec, miniAmd64) is { } c)
                Seed($"payload-{PayloadDecompressor.Name(codec)}", "mini-amd64", WithTrailer(codec, c, miniAmd64.Length));
        }
        foreach (var (path, tag) in new[] { (amd64Path, "amd64"), (i386Path, "i386") })
        {
            var bz = BzImage.Parse(File.ReadAllBytes(path), tag);
            var head = bz.Payload[..4096].ToArray();
            Seed($"payload-{PayloadDecompressor.Name(bz.Compression)}", $"real-head-{tag}", WithTrailer(bz.Compression, head, 16384));
        }

        // bzImages: the real setup code around a miniature payload, with a correct CRC; one signed.
        foreach (var codec in new[] { PayloadCompression.Gzip, PayloadCompression.Lz4, PayloadCompression.Xz, PayloadCompression.Zstd })
        {
            if (Compress(codec, miniAmd64) is { } c)
                Seed("bzimage", $"mini-{PayloadDecompressor.Name(codec)}", MiniBzImage(amd64File, WithTrailer(codec, c, miniAmd64.Length)));
        }
        if (SignedImage() is { } signed && Compress(PayloadCompression.Gzip, miniI386) is { } gz)
        {
            Seed("bzimage", "mini-signed-header", MiniBzImage(signed, gz));
            Seed("signature", "debian-signed", MiniSigned(signed));
        }
        Seed("signature", "unsigned-header", amd64File.AsSpan(0, 0x400).ToArray());

        // Tables: the first entries of each real table, behind the frame selector (0: x86-64, 1: i386).
        foreach (var (frame, sel) in new[] { (amd64, (byte)0), (i386, (byte)1) })
        {
            foreach (var (table, target, bytes) in new[]
            {
                (KernelPatchTables.AltInstructions, "alt-instructions", 12 * 200),
                (KernelPatchTables.ParaInstructions, "parainstructions", frame.Image.PointerSize * 2 * 100),
                (KernelPatchTables.SmpLocksSection, "smp-locks", 4 * 600),
                (KernelPatchTables.ReturnSites, "return-sites", 4 * 600),
                (KernelPatchTables.RetpolineSites, "retpoline-sites", 4 * 600),
            })
            {
                var section = frame.Image.Elf.FindSection(table);
                if (section is not { } s)
                    continue;
                var content = frame.Image.Elf.SectionBytes(s).Span;
                Seed(target, frame.Name, [sel, .. content[..Math.Min(bytes, content.Length)]]);
            }
            if (frame.CapFlagsAddress is { } caps)
                Seed("feature-numbering", frame.Name, [sel, .. frame.Image.ReadBytes(caps, 32 * 24 * frame.Image.PointerSize)]);
            var para = frame.Tables.Paravirt;
            var records = new List<byte> { sel };
            for (int i = 0; i < Math.Min(4, para.Length); i++)
            {
                records.AddRange(BitConverter.GetBytes((ushort)i));
                records.AddRange(i % 2 == 0 ? frame.Image.ReadBytes(para[i + 1].Address, 6).ToArray() : new byte[] { 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x90 });
            }
            Seed("pv-ops", frame.Name, [.. records]);
            foreach (var (kind, which) in new[] { (KernelSiteKind.JumpLabel, (byte)0), (KernelSiteKind.StaticCall, (byte)1), (KernelSiteKind.Mcount, (byte)2) })
            {
                if (frame.TextTables.Tables.FirstOrDefault(t => t.Kind == kind) is { Size: > 0 } info)
                    Seed("text-tables", $"{frame.Name}-{kind}", [sel, which, .. frame.Image.ReadBytes(info.Address, (int)Math.Min(info.Size, 2048UL))]);
            }
        }

        // Command lines: the ground-truth boots' and some with every option this version reads.
        Seed("command-line", "default", "console=ttyS0 nokaslr panic=0"u8.ToArray());
        Seed("command-line", "options", "mitigations=auto,nosmt spectre_v2=retpoline,lfence nopti pti=on retbleed=unret,nosmt spec_rstack_overflow=ibpb clearcpuid=514,avx2 noreplace-smp maxcpus=1 preempt=full ftrace=function ftrace_filter=\"vfs_* do_*\" -- init=/bin/sh"u8.ToArray());

        // cpuinfo: recorded QEMU CPUs and this machine's.
        foreach (var f in GroundTruthCpuInfos().Take(6))
            Seed("cpuinfo", Path.GetFileNameWithoutExtension(f), File.ReadAllBytes(f));
        if (File.Exists("/proc/cpuinfo"))
            Seed("cpuinfo", "this-machine", File.ReadAllBytes("/proc/cpuinfo"));

        // System.map: the head of the 6.1 build's (tests/data) or a few lines in its format.
        Seed("system-map", "lines", "ffffffff81000000 T _text\nffffffff81001000 T kvm_steal_clock\nffffffff82a39b40 D pv_ops\n0000000000000000 A __per_cpu_start\n"u8.ToArray());
        foreach (var f in SystemMaps().Take(2))
        {
            var text = File.ReadAllBytes(f);
            Seed("system-map", Path.GetFileName(Path.GetDirectoryName(f)!) + "-head", text.AsSpan(0, Math.Min(text.Length, 16384)).ToArray());
        }

        // vmlinux.relocs: the real i386 table's tail (its last entries and the terminator that starts it, rebuilt short).
        var relocs = i386.Image.Relocations!;
        var relocTable = new List<byte>(4 * 66) { 0, 0, 0, 0 };
        foreach (ulong e in relocs.Absolute32.Take(64))
            relocTable.AddRange(BitConverter.GetBytes((uint)e));
        Seed("relocs", "i386-head", [.. relocTable]);

        // cores: a small ELF64 and ELF32 core, one segment of the real i386 text's first page at its link address.
        var page = i386.Image.ReadBytes(i386.Image.Elf.FindSection(".text")!.Value.Address, 4096).ToArray();
        Seed("core", "elf32", MiniCore(false, 0xc1000000, page));
        Seed("core", "elf64", MiniCore(true, 0xffffffff81000000, page));

        Console.WriteLine($"{count} seeds in {dir}");
    }

    /// <summary>An ELF core (ET_CORE) with one PT_LOAD of <paramref name="data"/> at <paramref name="address"/>.</summary>
    internal static byte[] MiniCore(bool is64, ulong address, byte[] data)
    {
        int eh = is64 ? 64 : 52, ph = is64 ? 56 : 32;
        var b = new byte[eh + ph + data.Length];
        b[0] = 0x7f; b[1] = (byte)'E'; b[2] = (byte)'L'; b[3] = (byte)'F';
        b[4] = (byte)(is64 ? 2 : 1); b[5] = 1; b[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(16), 4);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(18), (ushort)(is64 ? 62 : 3));
        var p = b.AsSpan(eh);
        BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(32), (ulong)eh);
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(54), (ushort)ph);
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(56), 1);
            BinaryPrimitives.WriteUInt64LittleEndian(p[8..], (ulong)(eh + ph));
            BinaryPrimitives.WriteUInt64LittleEndian(p[16..], address);
            BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)data.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(p[40..], (ulong)data.Length);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(28), (uint)eh);
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(42), (ushort)ph);
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(44), 1);
            BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)(eh + ph));
            BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)address);
            BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)data.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)data.Length);
        }
        data.CopyTo(b, eh + ph);
        return b;
    }

    /// <summary>An ELF file with the source's header and section headers (names, types, flags, addresses) and each
    /// section's first <paramref name="cut"/> bytes; program headers dropped, or kept with their file bytes cut to 0.</summary>
    internal static byte[] MiniElf(ElfFile src, int cut, bool keepSegments)
    {
        var s = src.Bytes.Span;
        bool is64 = src.Is64;
        int ehsize = is64 ? 64 : 52, shentsize = is64 ? 64 : 40, phentsize = is64 ? 56 : 32;
        int phnum = keepSegments ? src.Segments.Count : 0;
        var data = new MemoryStream();
        data.Write(s[..ehsize]);
        long phoff = data.Length;
        if (keepSegments)
        {
            ulong srcPhoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(s[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(s[28..]);
            for (int i = 0; i < phnum; i++)
            {
                var p = s.Slice((int)srcPhoff + i * phentsize, phentsize).ToArray();
                if (is64) { BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), 0); BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(32), 0); }
                else { BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), 0); BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(16), 0); }
                data.Write(p);
            }
        }
        ulong srcShoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(s[40..]) : BinaryPrimitives.ReadUInt32LittleEndian(s[32..]);
        var headers = new List<byte[]>();
        foreach (var sec in src.Sections)
        {
            var h = s.Slice((int)srcShoff + sec.Index * shentsize, shentsize).ToArray();
            if (sec.Type != 0 && sec.Type != 8 && sec.Size > 0)
            {
                while (data.Length % 8 != 0) data.WriteByte(0);
                bool names = sec.Index == BinaryPrimitives.ReadUInt16LittleEndian(s[(is64 ? 62 : 50)..]);
                int n = (int)Math.Min(sec.Size, names ? sec.Size : (ulong)cut);
                long off = data.Length;
                data.Write(s.Slice((int)sec.FileOffset, n));
                if (is64) { BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(24), (ulong)off); BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(32), (ulong)n); }
                else { BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(16), (uint)off); BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(20), (uint)n); }
            }
            headers.Add(h);
        }
        while (data.Length % 8 != 0) data.WriteByte(0);
        long shoff = data.Length;
        foreach (var h in headers) data.Write(h);
        var f = data.ToArray();
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(32), keepSegments ? (ulong)phoff : 0);
            BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(40), (ulong)shoff);
            BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(56), (ushort)phnum);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(28), keepSegments ? (uint)phoff : 0);
            BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(32), (uint)shoff);
            BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(44), (ushort)phnum);
        }
        return f;
    }

    /// <summary>The real setup code and decompressor head of <paramref name="real"/> around another payload,
    /// with payload_length, syssize and init_size set to match and the build's CRC-32 at the end.</summary>
    internal static byte[] MiniBzImage(byte[] real, byte[] payload)
    {
        var h = SetupHeader.Parse(real, "seed");
        int start = h.SetupSize + (int)h.PayloadOffset;
        int pm = ((int)h.PayloadOffset + payload.Length + 4 + 15) / 16 * 16;
        var f = new byte[h.SetupSize + pm];
        real.AsSpan(0, start).CopyTo(f);
        payload.CopyTo(f, start);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(0x1f4), (uint)(pm / 16));
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(0x24c), (uint)payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(0x260), (uint)Math.Max(h.InitSize >> 10, payload.Length * 64));
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(f.Length - 4), KernelCrc32.Compute(f.AsSpan(0, f.Length - 4)));
        return f;
    }

    /// <summary>The signed image's headers (first 0x400 bytes) and its real certificate table right after them.</summary>
    private static byte[] MiniSigned(byte[] signed)
    {
        var pe = PeHeader.TryRead(signed)!;
        var table = signed.AsSpan((int)pe.CertificateTableOffset, (int)pe.CertificateTableSize);
        var f = new byte[0x400 + table.Length];
        signed.AsSpan(0, 0x400).CopyTo(f);
        table.CopyTo(f.AsSpan(0x400));
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(pe.CertificateEntryOffset), 0x400);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(pe.ChecksumOffset), PeHeader.ComputeChecksum(f, pe.ChecksumOffset));
        return f;
    }

    private static byte[] WithTrailer(PayloadCompression codec, byte[] stream, int size)
    {
        if (codec == PayloadCompression.Gzip)
            return stream;
        var p = new byte[stream.Length + 4];
        stream.CopyTo(p, 0);
        BinaryPrimitives.WriteInt32LittleEndian(p.AsSpan(stream.Length), size);
        return p;
    }

    /// <summary>Compresses as the kernel's Makefile.lib does, with the system's tool; null when it is missing.</summary>
    private static byte[]? Compress(PayloadCompression codec, byte[] input)
    {
        if (codec == PayloadCompression.Gzip)
        {
            using var ms = new MemoryStream();
            using (var gz = new GZipStream(ms, CompressionLevel.SmallestSize, leaveOpen: true))
                gz.Write(input);
            return ms.ToArray();
        }
        (string tool, string[] args) = codec switch
        {
            PayloadCompression.Bzip2 => ("bzip2", new[] { "-9", "-c" }),
            PayloadCompression.Lzma => ("lzma", ["-9", "-c"]),
            PayloadCompression.Xz => ("xz", ["--check=crc32", "--x86", "--lzma2=dict=1MiB", "-c"]),
            PayloadCompression.Lz4 => ("lz4", ["-l", "-9", "-c", "-", "-"]),
            PayloadCompression.Zstd => ("zstd", ["-19", "-c", "-q"]),
            _ => ("lzop", ["-9", "-c"]),
        };
        try
        {
            var psi = new ProcessStartInfo(tool) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var output = new MemoryStream();
            var copy = p.StandardOutput.BaseStream.CopyToAsync(output);
            p.StandardInput.BaseStream.Write(input);
            p.StandardInput.Close();
            copy.Wait();
            p.WaitForExit();
            return p.ExitCode == 0 ? output.ToArray() : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            Console.Error.WriteLine($"seed: {tool} is not installed; no {codec} seed");
            return null;
        }
    }

    private static byte[]? SignedImage()
    {
        var env = Environment.GetEnvironmentVariable("ALTPATCH_SIGNED_IMAGE");
        foreach (var p in new[] { env, Path.Combine(RepoRoot() ?? ".", "artifacts", "signed", "boot", "vmlinuz-6.1.0-50-cloud-amd64") })
        {
            if (p is { Length: > 0 } && File.Exists(p))
                return File.ReadAllBytes(p);
        }
        return null;
    }

    private static IEnumerable<string> GroundTruthCpuInfos()
    {
        var root = RepoRoot();
        if (root is null)
            return [];
        var dir = Path.Combine(root, "tests", "data", "groundtruth");
        return Directory.Exists(dir) ? Directory.GetFiles(dir, "*smp1.cpuinfo", SearchOption.AllDirectories).Order(StringComparer.Ordinal) : [];
    }

    private static IEnumerable<string> SystemMaps()
    {
        var root = RepoRoot();
        var dir = root is null ? null : Path.Combine(root, "tests", "data");
        return dir is not null && Directory.Exists(dir)
            ? Directory.GetFiles(dir, "System.map*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            : [];
    }

    internal static string? RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "Altpatch.slnx")))
                return d.FullName;
        }
        for (var d = new DirectoryInfo(Directory.GetCurrentDirectory()); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "Altpatch.slnx")))
                return d.FullName;
        }
        return null;
    }
}
