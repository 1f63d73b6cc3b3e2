"""PROGRAM_ROW on the analog boundary (docs/numerics.md section 6): the staged PROGRAM_DATA as
boundary words, word k with prog_index = k in consecutive cycles, then one prog_commit cycle
with prog_row and prog_mode.

The staged payload already has the boundary word's byte order (BoundaryLayout: word k carries
columns 4k .. 4k+3, column 4k+m as G+ byte 2m and G- byte 2m+1), two beats per word.
"""

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from pcmhil.interface import BOUNDARY_WORD_BITS, BoundaryLayout, Geometry, ProgramMode
from pcmhil.rtl.sizes import address_width

#: The program staging store's read shape: one boundary word per group.
ProgramWords = data.ArrayLayout(BOUNDARY_WORD_BITS, 1)

PROG_ROW_BITS = 16


class ProgramControl(wiring.Signature):
    """start: program `row` in `mode` from the staged words; busy: until the commit is out."""

    def __init__(self):
        super().__init__({
            "start": Out(1),
            "row": Out(PROG_ROW_BITS),
            "mode": Out(ProgramMode),
            "busy": In(1),
        })


class RowProgrammer(wiring.Component):
    """control: from the controller; words: the staged words (one cycle read latency); the rest:
    the programming ports of AnalogBoundary."""

    def __init__(self, geometry: Geometry):
        self.words_count = BoundaryLayout(geometry).prog_words
        super().__init__({
            "control": In(ProgramControl()),
            "words": In(ReadPort.Signature(addr_width=address_width(self.words_count), shape=ProgramWords)),
            "prog_valid": Out(1),
            "prog_index": Out(8),
            "prog_data": Out(BOUNDARY_WORD_BITS),
            "prog_commit": Out(1),
            "prog_row": Out(PROG_ROW_BITS),
            "prog_mode": Out(ProgramMode),
        })

    def elaborate(self, platform):
        m = Module()
        control = self.control
        index = Signal(address_width(self.words_count))
        # one stage between the memory read and the registered boundary outputs
        fetched, fetched_index, committing = Signal(), Signal.like(index), Signal()
        m.d.sync += [
            fetched.eq(0),
            committing.eq(0),
            self.prog_valid.eq(fetched),
            self.prog_index.eq(fetched_index),
            self.prog_commit.eq(committing),
        ]
        with m.If(fetched):
            m.d.sync += self.prog_data.eq(self.words.data[0])
        m.d.comb += [
            self.words.addr.eq(index),
            control.busy.eq(fetched | committing),
        ]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(control.start):
                    m.d.sync += [
                        index.eq(0),
                        self.prog_row.eq(control.row),
                        self.prog_mode.eq(control.mode),
                    ]
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += control.busy.eq(1)
                m.d.sync += [fetched.eq(1), fetched_index.eq(index), index.eq(index + 1)]
                with m.If(index == self.words_count - 1):
                    m.next = "COMMIT"
            with m.State("COMMIT"):
                m.d.comb += control.busy.eq(1)
                m.d.sync += committing.eq(1)
                m.next = "IDLE"
        return m
