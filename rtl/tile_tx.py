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

from amaranth import Array, Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

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

#: Groups of columns selected per register stage of the readout (a short mux per stage: the
#: columns are spread over the whole die).
READOUT_FAN_IN = 8

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
    CALIB_DATA beats are formed in two more stages (B, C).
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

        # stage A: the issued beat's group of columns, selected through a pipelined mux (the
        # columns are spread over the whole die), and its place in the packet, delayed to match
        place = data.StructLayout({"valid": 1, "group": len(group), "beat": len(beat_in_group),
                                   "group_done": 1})
        issuing = Signal(place)
        m.d.comb += [issuing.valid.eq(issue), issuing.group.eq(group), issuing.beat.eq(beat_in_group),
                     issuing.group_done.eq(end_of_group)]
        head_acc, head_counts, latency = self._select_group(m, group)
        issued = _delayed(m, issuing, latency)
        # the memories answer a cycle after their address: addressed one stage before stage A
        addressed = _delayed(m, issuing, latency - 1)

        m.submodules.offsets = offsets = Memory(shape=data.ArrayLayout(COUNTER_BITS, LDPU_LANES),
                                                depth=memory_depth(self.groups), init=[])
        calibrated = Signal()  # the offsets have been written since reset (else they are 0)
        offset_read = offsets.read_port()
        m.d.comb += [self.params.addr.eq(addressed.group), offset_read.addr.eq(addressed.group)]
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

    def _select_group(self, m: Module, group):
        """The raw values and counts of column group `group`, and the cycles they take."""
        head = Signal(data.StructLayout({
            "acc": data.ArrayLayout(signed(ACC_BITS), LDPU_LANES),
            "counts": data.ArrayLayout(COUNTER_BITS, LDPU_LANES),
        }))
        columns = [Cat(_group_of(self.acc, head.acc, g), _group_of(self.counts, head.counts, g))
                   for g in range(self.groups)]
        selected, latency = _pipelined_select(m, columns, group)
        m.d.comb += head.eq(selected)
        return head.acc, head.counts, latency

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
        """Stage A -> B -> C: the VERIFY_DATA or CALIB_DATA beat of the issued place. CALIB_DATA
        rounds in B and shifts in C (the two carry chains and the shifter in separate stages);
        the beat is written from C, and on a group's last beat its ADC offsets go to the offset
        memory."""
        place = data.StructLayout({"valid": 1, "group": len(issued.group), "pair": 1, "group_done": 1})
        at_b, at_c = Signal(place), Signal(place)
        m.d.sync += [
            at_b.valid.eq(issued.valid & enable),
            at_b.group.eq(issued.group),
            at_b.pair.eq(issued.beat[0]),  # CALIB_DATA: a pair of columns per beat
            at_b.group_done.eq(issued.group_done),
            at_c.eq(at_b),
        ]
        verify_b, verify_c = Signal(VerifyBeat), Signal(VerifyBeat)
        m.d.sync += [
            verify_b.plus.eq(head_acc[issued.beat][:COUNTER_BITS]),
            verify_b.minus.eq(head_counts[issued.beat]),
            verify_c.eq(verify_b),
        ]
        half = Signal.like(head_acc[0])  # 2^(k-1): a register, as k is fixed for the packet
        m.d.sync += half.eq(rounding_half(calib_log2))
        rounded_b = Signal.like(head_acc)
        offsets_c = Signal(data.ArrayLayout(COUNTER_BITS, LDPU_LANES))
        for lane in range(LDPU_LANES):
            m.d.sync += [
                rounded_b[lane].eq(head_acc[lane] + half),
                offsets_c[lane].eq(rounded_b[lane] >> calib_log2),
            ]
        pairs = [Signal(CalibBeat, name=f"calib_beat{k}") for k in range(LDPU_LANES // 2)]
        for k, pair in enumerate(pairs):
            m.d.comb += [pair[0].eq(offsets_c[2 * k]), pair[1].eq(offsets_c[2 * k + 1])]

        write_offsets = at_c.valid & at_c.group_done & (kind == PacketType.CALIB_DATA)
        m.d.comb += [
            offset_write.addr.eq(at_c.group),
            offset_write.data.eq(offsets_c),
            offset_write.en.eq(write_offsets),
        ]
        with m.If(write_offsets):
            m.d.sync += calibrated.eq(1)

        beats = stream.Signature(BUS_DATA_BITS, always_ready=True).create()
        m.d.comb += [
            beats.valid.eq(at_c.valid),
            beats.payload.eq(Mux(kind == PacketType.VERIFY_DATA, verify_c,
                                 Array(p.as_value() for p in pairs)[at_c.pair])),
        ]
        return beats


def _group_of(columns, group_signal, index: int):
    """Group `index` (LDPU_LANES columns) of every column's `columns`, shaped like `group_signal`."""
    group_bits = len(Value.cast(group_signal))
    return Value.cast(columns)[index * group_bits:(index + 1) * group_bits]


def _pipelined_select(m: Module, words: list, index) -> tuple[Signal, int]:
    """words[index] through registered stages of READOUT_FAN_IN-input muxes (at least one);
    returns the selection and its latency in cycles."""
    width = len(words[0])
    index_bits = ceil_log2(READOUT_FAN_IN)
    latency = 0
    while True:
        low = index[:index_bits]
        stage = []
        for k in range(0, len(words), READOUT_FAN_IN):
            chunk = words[k:k + READOUT_FAN_IN]
            register = Signal(width, name=f"select{latency}_{k // READOUT_FAN_IN}")
            m.d.sync += register.eq(Cat(*chunk).word_select(low, width) if len(chunk) > 1 else chunk[0])
            stage.append(register)
        latency += 1
        if len(stage) == 1:
            return stage[0], latency
        high = Signal(len(index) - index_bits, name=f"select{latency}_index")
        m.d.sync += high.eq(index[index_bits:])
        words, index = stage, high


def _delayed(m: Module, value, cycles: int):
    """`value` (a Signal, possibly a view) `cycles` clock cycles later."""
    for _ in range(cycles):
        register = Signal.like(value)
        m.d.sync += register.eq(value)
        value = register
    return value
