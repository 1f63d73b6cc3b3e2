"""DNN inference through the chip: quantisation, calibration, drift compensation, execution.

Numbers that flow (docs/numerics.md for the chip's side):
- Inputs of an MVM layer are quantised to int8 with one scale per layer, s_in = (99.9th
  percentile of |activation| over the calibration images) / 127 (RANGE_PERCENTILE).
- A block's column j returns raw_j ~ kappa_j * y_j + ... where y_j is the block's float partial
  product; the chip's LDPU turns raw into int8 codes out_j = (raw_j * gain_j + bias_j) >> shift.
  Calibration measures, per column, the affine map from raw to the expected float result with
  a least-squares fit over calibration vectors read through a probe LDPU setting (gain 1), then
  loads gain/bias so that out_j = y_j / s_out (s_out: the block's output scale). This absorbs
  CCO gain mismatch, the column's offset residue and systematic programming error.
- The layer bias is added by the LDPU of the first row block; partial sums of row blocks are
  accumulated on the host in float from each block's dequantised outputs (out * s_out). Column
  copies of a block (host/compiler.py) are calibrated column by column and averaged on the host.
- ReLU is fused into the LDPU when a layer has a single row block and ReLU is its only consumer
  (column copies are then rectified before they are averaged; on the MNIST-1D validation split
  this made no difference against rectifying the average on the host).
- Drift compensation. Global (Joshi et al., Nat. Comm. 2020): at calibration time each tile reads
  fixed reference vectors through the probe setting, REFERENCE_VECTORS calibration vectors of
  each of its blocks (a block's vectors drive only its rows, so only its columns count) and their
  negations; half the difference of the two reads is the column signal c without the ADC offset
  residue, which does not drift and would pull the factor towards 1 on small signals. At
  inference time the tile reads them again (signal n) and scales its LDPU gains by
  f = <c, c> / <c, n>: the least-squares fit of the current signal on the calibration-time one,
  which is the cleaner (larger) of the two, so the count noise of the drifted read does not bias
  f low as fitting c on n would. Per column (the variant REFERENCE.md mentions): the same
  estimate for each column over the vectors of its block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pcmhil.errors import ConfigError
from pcmhil.host.chip import Chip
from pcmhil.host.compiler import CODE_MAX, Block, Mapping, block_codes, tile_codes
from pcmhil.host.graph import (
    INPUT,
    MVM_OPS,
    Graph,
    Node,
    check_input,
    execute_node,
    im2col,
    rows_to_feature_map,
    run_float,
)
from pcmhil.host.programming import ProgramReport, program_and_verify, program_one_shot
from pcmhil.interface import (
    LDPU_BIAS_BITS,
    LDPU_GAIN_BITS,
    LDPU_SHIFT_BITS,
    OUTPUT_MAX,
    Activation,
    ReadMode,
)

GAIN_MAX = 2 ** (LDPU_GAIN_BITS - 1) - 1
BIAS_MAX = 2 ** (LDPU_BIAS_BITS - 1) - 1
SHIFT_MAX = 2**LDPU_SHIFT_BITS - 1
#: Percentile of |activation| that maps to the largest code. Clipping the rarest values buys
#: resolution: post-ReLU activations are heavy-tailed, and longer PWM inputs raise the column
#: signal above the ADC quantisation. Chosen on a validation split carved from the MNIST-1D
#: training set (docs/accuracy.md): 99.9 lost 6.3 points at one year where 99.99 lost 10.3
#: (one copy per weight); digits did not care.
RANGE_PERCENTILE = 99.9
#: Calibration vectors per layer; of them, reference vectors per block for drift compensation.
CALIBRATION_VECTORS = 256
REFERENCE_VECTORS = 64
#: Probe shift is raised until fewer than this fraction of probe outputs saturate.
PROBE_SATURATION = 0.002


def _vectors(node: Node, a: np.ndarray) -> np.ndarray:
    """An MVM layer's input activations -> the vectors it multiplies ([N * positions, fan_in])."""
    return im2col(a, node) if node.op.startswith("conv") else a.reshape(len(a), -1)


def _scale(values: np.ndarray) -> float:
    """Float value of one int8 step so that RANGE_PERCENTILE of |values| maps to 127."""
    top = float(np.percentile(np.abs(values), RANGE_PERCENTILE)) if values.size else 0.0
    return top / OUTPUT_MAX if top > 0 else 1.0


@dataclass
class BlockCalibration:
    s_out: float
    kappa: np.ndarray  # float result per raw count, per column
    beta: np.ndarray  # float offset, per column
    relu: bool


@dataclass
class TileState:
    probe_shift: int = 0
    shift: int = 0
    gain: np.ndarray | None = None
    bias: np.ndarray | None = None
    reference: np.ndarray | None = None  # int8 inputs [n, rows], every block's vectors in turn
    reference_columns: np.ndarray | None = None  # bool [n, cols]: the columns each vector drives
    reference_signal: np.ndarray | None = None  # offset-free raw [n, cols] at calibration time
    drift_gain: np.ndarray | None = None  # [cols] drift compensation factor, 1 without


@dataclass
class Deployment:
    """A graph mapped onto a chip: program, calibrate, compensate drift, run."""

    graph: Graph
    mapping: Mapping
    chip: Chip
    read_mode: ReadMode = ReadMode.ONE_PHASE
    s_in: dict[str, float] = field(default_factory=dict)
    blocks: dict[Block, BlockCalibration] = field(default_factory=dict)
    tiles: list[TileState] = field(default_factory=list)
    probes: dict[str, np.ndarray] = field(default_factory=dict)  # int8 calibration vectors per layer
    program_reports: list[ProgramReport] = field(default_factory=list)

    # ---- programming -----------------------------------------------------------------------

    def program(self, verify: bool = True, progress=None, **verify_options) -> None:
        cols = self.mapping.geometry.cols
        self.tiles = [TileState(drift_gain=np.ones(cols)) for _ in range(self.mapping.geometry.tiles)]
        for tile in range(self.mapping.geometry.tiles):
            plus, minus = tile_codes(self.mapping, tile)
            if verify:
                self.program_reports.append(program_and_verify(
                    self.chip, tile, plus, minus, progress=progress, **verify_options))
            else:
                program_one_shot(self.chip, tile, plus, minus, progress)

    # ---- calibration -----------------------------------------------------------------------

    def calibrate(self, x_calibration: np.ndarray, rng: np.random.Generator | None = None) -> None:
        """Input/output scales, ADC offsets, LDPU affine parameters, drift references."""
        rng = rng or np.random.default_rng(0)
        _, trace = run_float(self.graph, x_calibration, trace=True)
        trace[INPUT] = x_calibration
        for node in self.graph.mvm_nodes:
            vectors = _vectors(node, trace[node.inputs[0]])
            self.s_in[node.name] = _scale(vectors)
            pick = rng.choice(len(vectors), min(len(vectors), CALIBRATION_VECTORS), replace=False)
            self.probes[node.name] = self._quantise(node, vectors[np.sort(pick)])
        for tile in range(self.mapping.geometry.tiles):
            self.chip.configure(tile, read_mode=self.read_mode)
            self.chip.calibrate(tile, 4)
            self._calibrate_tile(tile)

    def _quantise(self, node: Node, vectors: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(vectors / self.s_in[node.name]), -128, 127).astype(np.int64)

    def _tile_inputs(self, block: Block, q: np.ndarray) -> np.ndarray:
        x = np.zeros((len(q), self.mapping.geometry.rows), dtype=np.int64)
        x[:, block.row0:block.row0 + block.tile_rows] = np.tile(q[:, block.in_start:block.in_stop],
                                                                 block.row_copies)
        return x

    def _probe(self, tile: int, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Raw estimates (out * 2**shift) of the given tile inputs through the probe LDPU,
        raising the shift until the outputs no longer saturate."""
        cols = self.mapping.geometry.cols
        state = self.tiles[tile]
        stacked = np.concatenate(inputs)
        while True:
            self.chip.load_ldpu(tile, np.ones(cols, dtype=np.int64), np.zeros(cols, dtype=np.int64))
            self.chip.configure(tile, read_mode=self.read_mode, shift=state.probe_shift)
            out = self.chip.mvm(tile, stacked).astype(np.int64)
            saturated = np.mean((out >= OUTPUT_MAX) | (out <= -OUTPUT_MAX - 1))
            if saturated < PROBE_SATURATION or state.probe_shift >= SHIFT_MAX:
                break
            state.probe_shift += 1
        raw = out * 2.0**state.probe_shift
        return np.split(raw, np.cumsum([len(i) for i in inputs])[:-1])

    def _calibrate_tile(self, tile: int) -> None:
        blocks = self.mapping.blocks_of_tile(tile)
        if not blocks:
            return
        state = self.tiles[tile]
        raws = self._probe(tile, [self._tile_inputs(b, self.probes[b.node]) for b in blocks])
        for block, raw in zip(blocks, raws, strict=True):
            self.blocks[block] = self._fit_block(block, raw[:, self._columns(block)])
        # Reference vectors: each block's first calibration vectors, within +-127 so they negate.
        references = [np.clip(self._tile_inputs(b, self.probes[b.node][:REFERENCE_VECTORS]), -127, 127)
                      for b in blocks]
        state.reference = np.concatenate(references)
        state.reference_columns = np.concatenate([np.tile(self._columns(b), (len(r), 1))
                                                  for b, r in zip(blocks, references, strict=True)])
        state.reference_signal = self._reference_signal(tile)
        self._load_final(tile)

    def _columns(self, block: Block) -> np.ndarray:
        columns = np.zeros(self.mapping.geometry.cols, dtype=bool)
        columns[block.col0:block.col0 + block.tile_cols] = True
        return columns

    def _reference_signal(self, tile: int) -> np.ndarray:
        """Column signals of the tile's reference vectors: (raw(v) - raw(-v)) / 2, in which the ADC
        offset residue cancels."""
        reference = self.tiles[tile].reference
        plus, minus = self._probe(tile, [reference, -reference])
        return (plus - minus) / 2

    def _fit_block(self, block: Block, raw: np.ndarray) -> BlockCalibration:
        """Per-column least-squares affine map from the raw reads of the block's calibration
        vectors to the results the devices were asked to compute."""
        node = self.graph.node(block.node)
        q = self.probes[block.node]
        plus, minus, w_max = block_codes(node, block)
        weights = (plus - minus) * (w_max / CODE_MAX)  # what the devices were asked to hold
        expected = q[:, block.in_start:block.in_stop] @ weights * self.s_in[node.name]
        kappa = np.zeros(block.tile_cols)
        beta = np.zeros(block.tile_cols)
        for j in range(block.tile_cols):
            design = np.stack([raw[:, j], np.ones(len(raw))], axis=1)
            if np.ptp(raw[:, j]) > 0:
                (kappa[j], beta[j]), *_ = np.linalg.lstsq(design, expected[:, j % block.cols], rcond=None)
        relu = self._fuses_relu(node)
        full = expected + self._bias(block)
        return BlockCalibration(_scale(np.maximum(full, 0) if relu else full), kappa, beta, relu)

    def _bias(self, block: Block) -> np.ndarray:
        """The layer bias the block adds (the first row block of a layer adds it, the others 0)."""
        node = self.graph.node(block.node)
        return node.bias[block.out_start:block.out_stop] if block.first_row_block else np.zeros(block.cols)

    def _fuses_relu(self, node: Node) -> bool:
        consumers = [n for n in self.graph.nodes if node.name in n.inputs]
        single = len({b.in_start for b in self.mapping.blocks[node.name]}) == 1
        return single and len(consumers) == 1 and consumers[0].op == "relu"

    def _load_final(self, tile: int) -> None:
        """LDPU gain/bias of every block of the tile (times the drift factor), one shift."""
        state = self.tiles[tile]
        cols = self.mapping.geometry.cols
        gain_f = np.zeros(cols)
        bias_f = np.zeros(cols)
        for block in self.mapping.blocks_of_tile(tile):
            cal = self.blocks[block]
            columns = self._columns(block)
            gain_f[columns] = cal.kappa * state.drift_gain[columns] / cal.s_out
            bias_f[columns] = (cal.beta + np.tile(self._bias(block), block.col_copies)) / cal.s_out
        shift = SHIFT_MAX
        while shift > 0 and (np.abs(gain_f).max() * 2**shift > GAIN_MAX
                             or np.abs(bias_f).max() * 2**shift > BIAS_MAX):
            shift -= 1
        state.shift = shift
        state.gain = np.clip(np.rint(gain_f * 2**shift), -GAIN_MAX - 1, GAIN_MAX).astype(np.int64)
        state.bias = np.clip(np.rint(bias_f * 2**shift), -BIAS_MAX - 1, BIAS_MAX).astype(np.int64)
        self.chip.load_ldpu(tile, state.gain, state.bias)
        self.chip.configure(tile, read_mode=self.read_mode, shift=shift)

    # ---- drift compensation ----------------------------------------------------------------

    def compensate_drift(self, per_column: bool = False) -> list[float]:
        """Drift compensation (module doc), one factor per tile or per column. Returns each tile's
        factor (per column: their median)."""
        factors = []
        for tile, state in enumerate(self.tiles):
            if state.reference is None:
                factors.append(1.0)
                continue
            then = np.where(state.reference_columns, state.reference_signal, 0.0)
            now = np.where(state.reference_columns, self._reference_signal(tile), 0.0)
            used = state.reference_columns.any(axis=0)
            power, cross = (then * then).sum(axis=0)[used], (then * now).sum(axis=0)[used]
            if not per_column:
                power, cross = power.sum(keepdims=True), cross.sum(keepdims=True)
            factor = np.divide(power, cross, out=np.ones_like(power), where=cross > 0)
            state.drift_gain[used] = factor
            factors.append(float(np.median(factor)))
            self._load_final(tile)
        return factors

    def reset_drift_compensation(self) -> None:
        """Back to the LDPU gains of calibration time (drift factor 1 on every column)."""
        for tile, state in enumerate(self.tiles):
            if (state.drift_gain != 1.0).any():
                state.drift_gain[:] = 1.0
                self._load_final(tile)

    # ---- execution -------------------------------------------------------------------------

    def run(self, x: np.ndarray, trace: bool = False):
        """Logits of a batch; with `trace`, also {node name: activation} for every node."""
        acts = {INPUT: check_input(self.graph, x)}
        for node in self.graph.nodes:
            inputs = [acts[name] for name in node.inputs]
            acts[node.name] = (self._mvm(node, inputs[0]) if node.op in MVM_OPS
                               else execute_node(node, inputs))
        out = acts[self.graph.output]
        return (out, acts) if trace else out

    def _mvm(self, node: Node, a: np.ndarray) -> np.ndarray:
        q = self._quantise(node, _vectors(node, a))
        y = np.zeros((len(q), max(b.out_stop for b in self.mapping.blocks[node.name])))
        for block in self.mapping.blocks[node.name]:
            cal = self.blocks[block]
            self.chip.configure(block.tile, read_mode=self.read_mode, shift=self.tiles[block.tile].shift,
                                activation=Activation.RELU if cal.relu else Activation.IDENTITY)
            out = self.chip.mvm(block.tile, self._tile_inputs(block, q))
            copies = out[:, self._columns(block)].reshape(len(q), block.col_copies, block.cols)
            y[:, block.out_start:block.out_stop] += copies.mean(axis=1) * cal.s_out
        if node.op.startswith("conv"):
            return rows_to_feature_map(y, node)
        return y


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def check_backend(backend: str) -> str:
    if backend not in ("float", "twin", "cosim"):
        raise ConfigError(f"backend must be one of ('float', 'twin', 'cosim'), not {backend!r}")
    return backend
