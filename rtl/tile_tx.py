"""The tile's packet assembler: column values -> RESULT, VERIFY_DATA and CALIB_DATA packets in
the output buffer (docs/numerics.md sections 4 to 6).

It reads the raw accumulators (and, for VERIFY_DATA, the ADC counters) one LDPU group of
LDPU_LANES columns at a time and writes one packet:
- RESULT: raw = acc - adc_offset (1-phase) or acc (4-phase), through the LDPU, one beat per group;
- VERIFY_DATA: per column (G+ count = acc, G- count = the counters), one beat per column;
- CALIB_DATA: adc_offset = (sum + 2^(k-1)) >> k per column, two columns per beat; the offsets are
  also written to the offset memory that 1-phase RESULTs subtract.
A packet starts only when the output buffer has room for all of it, so it is written without
stalls and the LDPU pipeline needs no back-pressure.
"""

from amaranth import Array, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from pcmhil.interface import (
    BUS_DATA_BITS,
    CALIBRATE_MAX_LOG2,
    COUNTER_BITS,
    INPUT_PACKET_TYPES,
    LDPU_GAIN_RESET,
    LDPU_LANES,
    LDPU_SHIFT_BITS,
    Geometry,
    PacketHeader,
    PacketType,
    packet_payload_beats,
)
from pcmhil.rtl.ldpu import Ldpu, LdpuParams, rounding_half
from pcmhil.rtl.raw_accumulator import ACC_BITS
from pcmhil.rtl.signatures import Beat
from pcmhil.rtl.sizes import address_width, memory_depth

#: Packets a tile sends.
OUTPUT_PACKET_TYPES = tuple(t for t in PacketType if t not in INPUT_PACKET_TYPES)

#: VERIFY_DATA: per column one beat, G+ count in the low half, G- count in the high half;
#: CALIB_DATA: two columns' ADC offsets per beat, the even column in the low half (numerics 6).
HALF_BEAT = BUS_DATA_BITS // 2
VerifyBeat = data.StructLayout({"plus": HALF_BEAT, "minus": HALF_BEAT})
CalibBeat = data.ArrayLayout(HALF_BEAT, 2)

AUX_SHAPE = data.Layout.cast(PacketHeader)["aux"].shape

#: The active parameters until the first LOAD_LDPU (numerics 5, reset values).
PARAMS_RESET = LdpuParams.const({"gain": LDPU_GAIN_RESET, "bias": 0})


def packet_beats(kind: PacketType, geometry: Geometry) -> int:
    """Beats of a whole output packet: header and payload."""
    return 1 + packet_payload_beats(kind, geometry)


class TxControl(wiring.Signature):
    """The controller's side of the assembler: `start` one packet of `kind` with header `aux`;
    calib_log2: CALIBRATE's k; subtract_offset: 1-phase RESULT; ldpu_shift/relu: LDPU config;
    busy: from the cycle after `start` to the cycle the packet's last beat is written."""

    def __init__(self):
        super().__init__({
            "start": Out(1),
            "kind": Out(PacketType, init=PacketType.RESULT),
            "aux": Out(AUX_SHAPE),
            "calib_log2": Out(range(CALIBRATE_MAX_LOG2 + 1)),
            "subtract_offset": Out(1),
            "ldpu_shift": Out(LDPU_SHIFT_BITS),
            "relu": Out(1),
            "busy": In(1),
        })


class TileTx(wiring.Component):
    """control: from the controller; acc/counts: the raw accumulators and ADC counters of every
    column; params: the active LDPU parameters (one cycle latency), valid once params_loaded;
    out/room: the output buffer's write side and its free beats.

    The readout is a pipeline: a group is issued (its memories addressed, its columns selected
    into a register, stage A); RESULT beats leave stage A through the LDPU; VERIFY_DATA and
    CALIB_DATA beats are formed in stage A and written from a register (stage B).
    """

    def __init__(self, geometry: Geometry, tile_index: int):
        self.geometry, self.tile_index = geometry, tile_index
        self.groups = geometry.cols // LDPU_LANES
        self.depth = max(packet_beats(kind, geometry) for kind in OUTPUT_PACKET_TYPES)
        super().__init__({
            "control": In(TxControl()),
            "acc": In(data.ArrayLayout(signed(ACC_BITS), geometry.cols)),
            "counts": In(data.ArrayLayout(COUNTER_BITS, geometry.cols)),
            "params": In(ReadPort.Signature(addr_width=address_width(self.groups),
                                            shape=data.ArrayLayout(LdpuParams, LDPU_LANES))),
            "params_loaded": In(1),
            "out": Out(stream.Signature(Beat, always_ready=True)),
            "room": In(range(self.depth + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        control = self.control
        # the packet being assembled, captured at `start`
        kind = Signal(PacketType, init=PacketType.RESULT)
        aux = Signal(AUX_SHAPE)
        calib_log2 = Signal.like(control.calib_log2)
        subtract_offset = Signal()
        total = Signal(range(self.depth + 1))  # beats of the packet
        per_group = Signal(range(LDPU_LANES + 1))  # payload beats per group of columns
        with m.Switch(kind):
            for packet_type in OUTPUT_PACKET_TYPES:
                with m.Case(packet_type):
                    payload = packet_payload_beats(packet_type, self.geometry)
                    m.d.comb += [total.eq(1 + payload), per_group.eq(payload // self.groups)]
        is_result = kind == PacketType.RESULT

        # issue: group by group, per_group beats each
        group = Signal(address_width(self.groups))
        beat_in_group = Signal(range(LDPU_LANES))
        issue = Signal()
        end_of_group = beat_in_group == per_group - 1
        last_group = group == self.groups - 1

        # stage A: the issued beat's group of columns, registered with its place in the packet
        issued = Signal(data.StructLayout({"valid": 1, "group": len(group), "beat": len(beat_in_group),
                                           "group_done": 1}))
        m.d.sync += [issued.valid.eq(issue), issued.group.eq(group), issued.beat.eq(beat_in_group),
                     issued.group_done.eq(end_of_group)]
        head_acc = Signal(data.ArrayLayout(signed(ACC_BITS), LDPU_LANES))
        head_counts = Signal(data.ArrayLayout(COUNTER_BITS, LDPU_LANES))
        with m.If(issue):
            m.d.sync += [head_acc.eq(_group_of(self.acc, head_acc, group)),
                         head_counts.eq(_group_of(self.counts, head_counts, group))]

        m.submodules.offsets = offsets = Memory(shape=data.ArrayLayout(COUNTER_BITS, LDPU_LANES),
                                                depth=memory_depth(self.groups), init=[])
        calibrated = Signal()  # the offsets have been written since reset (else they are 0)
        offset_read = offsets.read_port()
        m.d.comb += [self.params.addr.eq(group), offset_read.addr.eq(group)]
        subtracted = Signal.like(offset_read.data)
        with m.If(subtract_offset & calibrated):
            m.d.comb += subtracted.eq(offset_read.data)
        result = self._result_beats(m, head_acc, issued.valid & is_result, subtracted)
        direct = self._direct_beats(m, kind, head_acc, head_counts, issued, ~is_result, calib_log2,
                                    offsets.write_port(), calibrated)

        # the beats of the packet (the header, then one of the two pipelines) leave through a
        # register, so that the output buffer's write logic starts at flip-flops
        header = Signal(PacketHeader)
        m.d.comb += [header.type.eq(kind), header.tile.eq(self.tile_index), header.aux.eq(aux)]
        beat = Signal(Beat)
        beat_valid = Signal()
        produced = Signal(range(self.depth + 1))  # beats of the packet so far
        with m.If(beat_valid):
            m.d.sync += produced.eq(produced + 1)
        m.d.comb += beat.last.eq(produced == total - 1)
        for source in (result, direct):  # never both: one packet at a time
            with m.If(source.valid):
                m.d.comb += [beat_valid.eq(1), beat.data.eq(source.payload)]
        m.d.sync += [self.out.valid.eq(beat_valid), self.out.payload.eq(beat)]
        # The output buffer only drains while the packet waits for room, so a room compared in
        # the cycle before is never more than there is.
        room_ok = Signal()

        with m.FSM():
            with m.State("IDLE"):
                with m.If(control.start):
                    m.d.sync += [
                        kind.eq(control.kind),
                        aux.eq(control.aux),
                        calib_log2.eq(control.calib_log2),
                        subtract_offset.eq(control.subtract_offset),
                        produced.eq(0),
                    ]
                    m.next = "ROOM"
            with m.State("ROOM"):
                m.d.comb += control.busy.eq(1)
                m.d.sync += room_ok.eq(self.room >= total)
                with m.If(room_ok):
                    m.d.comb += [beat_valid.eq(1), beat.data.eq(header)]
                    m.d.sync += [group.eq(0), beat_in_group.eq(0), room_ok.eq(0)]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [control.busy.eq(1), issue.eq(1)]
                with m.If(end_of_group):
                    m.d.sync += [beat_in_group.eq(0), group.eq(group + 1)]
                    with m.If(last_group):
                        m.next = "DRAIN"
                with m.Else():
                    m.d.sync += beat_in_group.eq(beat_in_group + 1)
            with m.State("DRAIN"):  # the pipelines empty
                with m.If(self.out.valid & self.out.payload.last):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += control.busy.eq(1)
        return m

    def _result_beats(self, m: Module, head_acc, valid, offsets):
        """Stage A -> LDPU: raw = acc - offset with the group's parameters (both read from
        memories addressed at issue); RESULT beats Ldpu.LATENCY cycles later."""
        m.submodules.ldpu = ldpu = Ldpu()
        m.d.comb += [
            ldpu.i.valid.eq(valid),
            ldpu.shift.eq(self.control.ldpu_shift),
            ldpu.relu.eq(self.control.relu),
        ]
        for lane in range(LDPU_LANES):
            m.d.comb += [
                ldpu.i.payload[lane].raw.eq(head_acc[lane] - offsets[lane]),
                ldpu.i.payload[lane].params.eq(
                    Mux(self.params_loaded, self.params.data[lane], PARAMS_RESET)),
            ]
        return ldpu.o

    def _direct_beats(self, m: Module, kind, head_acc, head_counts, issued, enable, calib_log2,
                      offset_write, calibrated):
        """Stage A -> B: the VERIFY_DATA or CALIB_DATA beat of the issued place, registered; the
        group's ADC offsets go to the offset memory in stage B of its last beat."""
        verify = Signal(VerifyBeat)
        m.d.comb += [
            verify.plus.eq(head_acc[issued.beat][:COUNTER_BITS]),
            verify.minus.eq(head_counts[issued.beat]),
        ]
        half = rounding_half(calib_log2)
        offsets = Signal(data.ArrayLayout(COUNTER_BITS, LDPU_LANES))
        for lane in range(LDPU_LANES):
            m.d.comb += offsets[lane].eq((head_acc[lane] + half) >> calib_log2)

        # stage B
        staged, group_done, pair_index = Signal(), Signal(), Signal()
        group = Signal.like(issued.group)
        verify_b, offsets_b = Signal.like(verify), Signal.like(offsets)
        m.d.sync += [
            staged.eq(issued.valid & enable),
            group.eq(issued.group),
            group_done.eq(issued.group_done),
            pair_index.eq(issued.beat[0]),  # CALIB_DATA: a pair of columns per beat
            verify_b.eq(verify),
            offsets_b.eq(offsets),
        ]
        pairs = [Signal(CalibBeat, name=f"calib_beat{k}") for k in range(LDPU_LANES // 2)]
        for k, pair in enumerate(pairs):
            m.d.comb += [pair[0].eq(offsets_b[2 * k]), pair[1].eq(offsets_b[2 * k + 1])]

        write_offsets = staged & group_done & (kind == PacketType.CALIB_DATA)
        m.d.comb += [
            offset_write.addr.eq(group),
            offset_write.data.eq(offsets_b),
            offset_write.en.eq(write_offsets),
        ]
        with m.If(write_offsets):
            m.d.sync += calibrated.eq(1)

        beats = stream.Signature(BUS_DATA_BITS, always_ready=True).create()
        m.d.comb += [
            beats.valid.eq(staged),
            beats.payload.eq(Mux(kind == PacketType.VERIFY_DATA, verify_b,
                                 Array(p.as_value() for p in pairs)[pair_index])),
        ]
        return beats


def _group_of(columns, group_signal, index):
    """Group `index` (LDPU_LANES columns) of every column's `columns`, shaped like `group_signal`."""
    group_bits = len(Value.cast(group_signal))
    return Value.cast(columns).word_select(index, group_bits)
