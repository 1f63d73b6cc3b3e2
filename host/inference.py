"""DNN inference through the chip: quantisation, calibration, drift compensation, execution.

Numbers that flow (docs/numerics.md for the chip's side):
- Inputs of an MVM layer are quantised to int8 with one scale per layer, s_in = (99.99th
  percentile of |activation| over the calibration images) / 127.
- A block's column j returns raw_j ~ kappa_j * y_j + ... where y_j is the block's float partial
  product; the chip's LDPU turns raw into int8 codes out_j = (raw_j * gain_j + bias_j) >> shift.
  Calibration measures, per column, the affine map from raw to the expected float result with
  a least-squares fit over calibration vectors read through a probe LDPU setting (gain 1), then
  loads gain/bias so that out_j = y_j / s_out (s_out: the block's output scale). This absorbs
  CCO gain mismatch, the column's offset residue and systematic programming error.
- The layer bias is added by the LDPU of the first row block; partial sums of row blocks are
  accumulated on the host in float from each block's dequantised outputs (out * s_out).
- ReLU is fused into the LDPU when a layer has a single row block and ReLU is its only consumer.
- Global drift compensation (Joshi et al., Nat. Comm. 2020): at calibration time each tile reads
  a fixed set of reference vectors through the probe setting and records the summed |raw|; at
  inference time it reads them again and scales the tile's LDPU gains by the ratio.
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
#: Percentile of |activation| that maps to the largest code (robust to rare outliers).
RANGE_PERCENTILE = 99.99
#: Calibration vectors per block and reference vectors per tile for drift compensation.
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
    reference: np.ndarray | None = None  # int8 inputs [REFERENCE_VECTORS, rows]
    reference_sum: float = 0.0
    drift_factor: float = 1.0


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
    program_reports: list[ProgramReport] = field(default_factory=list)

    # ---- programming -----------------------------------------------------------------------

    def program(self, verify: bool = True, progress=None, **verify_options) -> None:
        self.tiles = [TileState() for _ in range(self.mapping.geometry.tiles)]
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
        probes: dict[str, np.ndarray] = {}
        for node in self.graph.mvm_nodes:
            vectors = _vectors(node, trace[node.inputs[0]])
            self.s_in[node.name] = _scale(vectors)
            pick = rng.choice(len(vectors), min(len(vectors), CALIBRATION_VECTORS), replace=False)
            probes[node.name] = self._quantise(node, vectors[np.sort(pick)])
        for tile in range(self.mapping.geometry.tiles):
            self.chip.configure(tile, read_mode=self.read_mode)
            self.chip.calibrate(tile, 4)
            self._calibrate_tile(tile, probes)

    def _quantise(self, node: Node, vectors: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(vectors / self.s_in[node.name]), -128, 127).astype(np.int64)

    def _tile_inputs(self, block: Block, q: np.ndarray) -> np.ndarray:
        x = np.zeros((len(q), self.mapping.geometry.rows), dtype=np.int64)
        x[:, block.row0:block.row0 + block.rows] = q[:, block.in_start:block.in_stop]
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

    def _calibrate_tile(self, tile: int, probes: dict[str, np.ndarray]) -> None:
        blocks = self.mapping.blocks_of_tile(tile)
        if not blocks:
            return
        state = self.tiles[tile]
        inputs = [self._tile_inputs(b, probes[b.node]) for b in blocks]
        reference = np.concatenate(inputs)[:REFERENCE_VECTORS]
        raws = self._probe(tile, inputs + [reference])
        state.reference = reference
        state.reference_sum = float(np.abs(raws[-1]).sum())
        for block, q, raw in zip(blocks, (probes[b.node] for b in blocks), raws, strict=False):
            self.blocks[block] = self._fit_block(block, q, raw[:, block.col0:block.col0 + block.cols])
        self._load_final(tile)

    def _fit_block(self, block: Block, q: np.ndarray, raw: np.ndarray) -> BlockCalibration:
        node = self.graph.node(block.node)
        plus, minus, w_max = block_codes(node, block)
        weights = (plus - minus) * (w_max / CODE_MAX)  # what the devices were asked to hold
        expected = q[:, block.in_start:block.in_stop] @ weights * self.s_in[node.name]
        kappa = np.zeros(block.cols)
        beta = np.zeros(block.cols)
        for j in range(block.cols):
            design = np.stack([raw[:, j], np.ones(len(raw))], axis=1)
            if np.ptp(raw[:, j]) > 0:
                (kappa[j], beta[j]), *_ = np.linalg.lstsq(design, expected[:, j], rcond=None)
        bias = node.bias[block.out_start:block.out_stop] if block.first_row_block else 0.0
        relu = self._fuses_relu(node)
        full = expected + bias
        return BlockCalibration(_scale(np.maximum(full, 0) if relu else full), kappa, beta, relu)

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
            node = self.graph.node(block.node)
            bias = node.bias[block.out_start:block.out_stop] if block.first_row_block else 0.0
            sl = slice(block.col0, block.col0 + block.cols)
            gain_f[sl] = cal.kappa * state.drift_factor / cal.s_out
            bias_f[sl] = (cal.beta + bias) / cal.s_out
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

    def compensate_drift(self) -> list[float]:
        """Global drift compensation per tile; returns the factors applied."""
        factors = []
        for tile, state in enumerate(self.tiles):
            if state.reference is None:
                factors.append(1.0)
                continue
            (raw,) = self._probe(tile, [state.reference])
            now = float(np.abs(raw).sum())
            state.drift_factor = state.reference_sum / now if now > 0 else 1.0
            factors.append(state.drift_factor)
            self._load_final(tile)
        return factors

    def reset_drift_compensation(self) -> None:
        """Back to the LDPU gains of calibration time (drift factor 1 on every tile)."""
        for tile, state in enumerate(self.tiles):
            if state.reference is not None and state.drift_factor != 1.0:
                state.drift_factor = 1.0
                self._load_final(tile)

    # ---- execution -------------------------------------------------------------------------

    def run(self, x: np.ndarray, trace: bool = False):
        """Logits of a batch; with `trace`, also {node name: activation} for every node."""
        acts = {INPUT: np.asarray(x, dtype=np.float64)}
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
            y[:, block.out_start:block.out_stop] += out[:, block.col0:block.col0 + block.cols] * cal.s_out
        if node.op.startswith("conv"):
            return rows_to_feature_map(y, node)
        return y


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def check_backend(backend: str) -> str:
    if backend not in ("float", "twin", "cosim"):
        raise ConfigError(f"backend must be one of ('float', 'twin', 'cosim'), not {backend!r}")
    return backend
