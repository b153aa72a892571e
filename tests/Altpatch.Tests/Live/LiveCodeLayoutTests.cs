using static Altpatch.Native.LiveCode;

namespace Altpatch.Tests.Live;

/// <summary>
/// The live code's data layout (<c>Native/LiveCode.Layout.cs</c>) checked statically: the offsets the emitters take
/// from the typed structs (<c>Marshal.OffsetOf</c>, <c>sizeof</c>) are the fields' real addresses, the kernel ABI
/// structs have the kernel's layout, and the regions of the data mapping fit where the code assumes.
/// </summary>
public unsafe class LiveCodeLayoutTests
{
    private static int At(void* field, void* @struct) => (int)((byte*)field - (byte*)@struct);

    [Fact]
    public void Control_block_offsets_are_the_fields_addresses()
    {
        ControlBlock c = default;
        var b = &c;
        Assert.Equal(At(&b->Readers, b), Ctl.Readers);
        Assert.Equal(At(&b->Known, b), Ctl.Known);
        Assert.Equal(At(&b->Inflight, b), Ctl.Inflight);
        Assert.Equal(At(&b->OurTraps, b), Ctl.OurTraps);
        Assert.Equal(At(&b->ChainedTraps, b), Ctl.ChainedTraps);
        Assert.Equal(At(&b->PrevHandler, b), Ctl.PrevHandler);
        Assert.Equal(At(&b->Hazards, b), Ctl.Hazards);
        Assert.Equal(At(&b->HazardCount, b), Ctl.HazardCount);
        Assert.Equal(At(&b->HazardMin, b), Ctl.HazardMin);
        Assert.Equal(At(&b->HazardMax, b), Ctl.HazardMax);
        Assert.Equal(At(&b->Slots, b), Ctl.Slots);
        Assert.Equal(At(&b->SlotCapacity, b), Ctl.SlotCapacity);
        Assert.Equal(At(&b->ProbeGen, b), Ctl.ProbeGen);
        Assert.Equal(At(&b->MainTop, b), Ctl.MainTop);
        Assert.Equal(At(&b->MainMax, b), Ctl.MainMax);
        Assert.Equal(At(&b->TrapStart, b), Ctl.TrapStart);
        Assert.Equal(At(&b->TrapDecided, b), Ctl.TrapDecided);
        Assert.Equal(At(&b->ProbesAnswered, b), Ctl.ProbesAnswered);
        Assert.Equal(At(&b->MaxScan, b), Ctl.MaxScan);
        Assert.Equal(At(&b->DflAction, b), Ctl.DflAction);
        Assert.Equal(At(&b->TrapSet, b), Ctl.TrapSet);
        Assert.Equal(At(&b->BlockSet, b), Ctl.BlockSet);
        Assert.Equal(At(&b->SavedMask, b), Ctl.SavedMask);
        Assert.Equal(At(&b->TimeScratch, b), Ctl.TimeScratch);
        Assert.Equal(At(&b->ProbeSignal, b), Ctl.ProbeSignal);
        Assert.Equal(At(&b->Pid, b), Ctl.Pid);
        Assert.Equal(At(&b->SleepTime, b), Ctl.SleepTime);
        Assert.Equal(At(b->SigInfo, b), Ctl.SigInfo);
        Assert.Equal(At(&b->Pending, b), Ctl.Pending);
        Assert.Equal(At(&b->WaitIterations, b), Ctl.WaitIterations);
        Assert.Equal(At(&b->ProbesSent, b), Ctl.ProbesSent);
        Assert.Equal(At(&b->InsideAnswers, b), Ctl.InsideAnswers);
        Assert.Equal(At(&b->Syncs, b), Ctl.Syncs);
        Assert.Equal(At(b->ProcTaskPath, b), Ctl.ProcTaskPath);
        // Every field the emitted code reads or writes as a qword is 8-byte aligned (a single store, never torn).
        Assert.All(new[] { Ctl.Readers, Ctl.Known, Ctl.Inflight, Ctl.OurTraps, Ctl.HazardCount, Ctl.ProbeGen, Ctl.ProbesSent, Ctl.Pending },
            o => Assert.Equal(0, o % 8));
        // The control block is the first page; the getdents buffer follows it.
        Assert.True(sizeof(ControlBlock) <= DataLayout.DirentOffset);
    }

    [Fact]
    public void Batch_descriptor_entry_and_slot_offsets_are_the_fields_addresses()
    {
        BatchDescriptor d = default;
        var p = &d;
        Assert.Equal(At(&p->Count, p), Desc.Count);
        Assert.Equal(At(&p->Entries, p), Desc.Entries);
        Assert.Equal(At(&p->Flags, p), Desc.Flags);
        Assert.Equal(At(&p->TimeoutNs, p), Desc.TimeoutNs);
        Assert.Equal(At(&p->SelfTid, p), Desc.SelfTid);
        Assert.Equal(At(&p->OutTid, p), Desc.OutTid);
        Assert.Equal(At(&p->OutDetail, p), Desc.OutDetail);
        Assert.Equal(At(&p->OutStatus, p), Desc.OutStatus);
        Assert.Equal(At(&p->OutErrno, p), Desc.OutErrno);
        Assert.Equal(At(&p->OutThreads, p), Desc.OutThreads);
        Assert.Equal(At(&p->Stamps, p), Desc.Stamps);

        BatchEntry e = default;
        var q = &e;
        Assert.Equal(At(&q->Rw, q), Desc.Rw);
        Assert.Equal(At(&q->Tail, q), Desc.Tail);
        Assert.Equal(At(&q->TailLength, q), Desc.TailLength);
        Assert.Equal(At(&q->NewFirst, q), Desc.NewFirst);
        Assert.Equal(At(&q->OldFirst, q), Desc.OldFirst);
        Assert.Equal(At(&q->Single, q), Desc.Single);
        Assert.Equal(sizeof(BatchEntry), Desc.EntrySize);
        Assert.Equal((long)sizeof(BatchEntry), (byte*)(q + 1) - (byte*)q); // the array stride the batch loops add

        ProbeSlot s = default;
        var r = &s;
        Assert.Equal(At(&r->Word, r), Slot.Word);
        Assert.Equal(At(&r->Detail, r), Slot.Detail);
        Assert.Equal(At(&r->Tid, r), Slot.Tid);
        Assert.Equal(At(&r->LastAnswer, r), Slot.LastAnswer);
        Assert.Equal(sizeof(ProbeSlot), 1 << Slot.Shift); // slot i is at Slots + (i << Shift)

        KnownTable k = default;
        var t = &k;
        Assert.Equal(At(&t->Count, t), Known.Count);
        Assert.Equal(At(KnownTable.Addresses(t), t), Known.Addresses);
    }

    [Fact]
    public void Kernel_abi_structs_have_the_kernels_layout()
    {
        Assert.Equal(32, sizeof(KernelSigAction));          // struct sigaction for rt_sigaction (x86-64)
        Assert.Equal(16, sizeof(Timespec));
        Assert.Equal(8, Time.Nanoseconds);
        Assert.Equal(16, sizeof(Iovec));
        Assert.Equal(8, Frame.IovLength);
        Assert.Equal(24, sizeof(StackT));                   // stack_t: ss_sp, ss_flags, ss_size
        Assert.Equal(8, Frame.AltStackFlags);
        Assert.Equal(16, Dirent.Reclen);                    // struct linux_dirent64
        Assert.Equal(19, Dirent.Name);
        // The probe frame keeps RSP 16-byte aligned and holds both sigaltstack's answer and the scan's locals.
        Assert.Equal(0, Frame.Size % 16);
        Assert.True(Frame.Size >= sizeof(ProbeScan) && Frame.Size >= sizeof(StackT));
    }

    [Fact]
    public void Data_regions_do_not_overlap_and_hold_their_capacities()
    {
        (int Start, long Length)[] regions =
        [
            (0, sizeof(ControlBlock)),
            (DataLayout.DirentOffset, DataLayout.DirentSize),
            (DataLayout.SlotsOffset, (long)DataLayout.SlotCapacity * sizeof(ProbeSlot)),
            (DataLayout.KnownAOffset, sizeof(KnownTable) + 16L * DataLayout.KnownCapacity),
            (DataLayout.KnownBOffset, sizeof(KnownTable) + 16L * DataLayout.KnownCapacity),
            (DataLayout.HazardsOffset, 8L * DataLayout.HazardCapacity),
        ];
        for (int i = 1; i < regions.Length; i++)
            Assert.True(regions[i - 1].Start + regions[i - 1].Length <= regions[i].Start, $"region {i - 1} runs into region {i}");
        Assert.True(regions[^1].Start + regions[^1].Length <= DataLayout.Size);
        Assert.Equal(0, DataLayout.Size % Environment.SystemPageSize);
    }
}
