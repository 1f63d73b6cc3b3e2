"""Compiler/mapper: a layer graph onto the chip's tiles.

Every MVM layer (Linear, Conv via im2col: one MVM per output position) is a matrix M[in, out]
with the inputs on crossbar rows and the outputs on columns. A layer larger than a tile is cut
into row blocks (its partial sums are accumulated digitally on the host, in float, from each
block's dequantised int8 outputs: see host/inference.py) and column blocks. Blocks are placed on
tiles diagonally: each block takes rows and columns no other block of its tile uses, so small
layers share a tile and a block's MVM (only its rows driven) never sees another block's
devices. Weights are scaled per column of a block to the full conductance range.

Copies. The columns a tile leaves idle hold further copies of its blocks, averaged on the host
(`_fill_columns`). Row copies (the same inputs on several row groups, whose currents add in the
column) raise the signal above the ADC quantisation too, but the mapper cannot see the ADC's
range from the host, so they are only made when asked for (`copies`), never by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pcmhil.errors import ConfigError
from pcmhil.host.graph import Graph, Node, weight_matrix
from pcmhil.interface import TILES_MAX, Geometry

#: Largest target code of a PROGRAM_DATA byte (docs/numerics.md section 8).
CODE_MAX = 255


@dataclass(frozen=True)
class Block:
    """A piece M[in_start:in_stop, out_start:out_stop] of layer `node`, at (row0, col0) of `tile`."""

    node: str
    tile: int
    row0: int
    col0: int
    in_start: int
    in_stop: int
    out_start: int
    out_stop: int
    row_copies: int = 1  # copies stacked over rows, driven with the same inputs (currents add)
    col_copies: int = 1  # copies side by side over columns (their outputs are averaged)

    @property
    def rows(self) -> int:
        return self.in_stop - self.in_start

    @property
    def cols(self) -> int:
        return self.out_stop - self.out_start

    @property
    def tile_rows(self) -> int:
        """Crossbar rows the block occupies, from row0."""
        return self.rows * self.row_copies

    @property
    def tile_cols(self) -> int:
        """Crossbar columns the block occupies, from col0 (copy c of output k at col0 + c * cols + k)."""
        return self.cols * self.col_copies

    @property
    def first_row_block(self) -> bool:
        return self.in_start == 0


@dataclass
class Mapping:
    graph: Graph
    geometry: Geometry
    blocks: dict[str, list[Block]] = field(default_factory=dict)

    @property
    def tiles_used(self) -> int:
        return self.geometry.tiles

    def blocks_of_tile(self, tile: int) -> list[Block]:
        return [b for blocks in self.blocks.values() for b in blocks if b.tile == tile]

    def positions(self, node: Node) -> int:
        """MVMs per image for one block of `node` (output positions of a conv, else 1)."""
        return int(np.prod(node.output_shape[1:])) if node.op.startswith("conv") else 1

    def report(self) -> dict:
        g = self.geometry
        cells = sum(b.tile_rows * b.tile_cols for blocks in self.blocks.values() for b in blocks)
        mvms = sum(self.positions(self.graph.node(name)) * len(blocks)
                   for name, blocks in self.blocks.items())
        return {
            "tile_rows": g.rows, "tile_cols": g.cols, "tiles_used": g.tiles,
            "utilisation": round(cells / (g.tiles * g.rows * g.cols), 4),
            "mvms_per_inference": mvms,
            "layers": {name: {"blocks": len(blocks),
                              "row_blocks": len({b.in_start for b in blocks}),
                              "col_blocks": len({b.out_start for b in blocks}),
                              "copies": [[b.row_copies, b.col_copies] for b in blocks],
                              "tiles": sorted({b.tile for b in blocks})}
                       for name, blocks in self.blocks.items()},
        }


def _split(size: int, limit: int) -> list[tuple[int, int]]:
    """[start, stop) pieces of near-equal size, each <= limit."""
    pieces = -(-size // limit)
    edges = np.linspace(0, size, pieces + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def map_graph(graph: Graph, rows: int = 256, cols: int = 256, max_tiles: int = TILES_MAX,
              copies: dict[str, tuple[int, int]] | None = None) -> Mapping:
    """Place every MVM layer of `graph` on tiles of rows x cols; ConfigError if it needs more
    than `max_tiles` tiles (the message gives the numbers).

    `copies` maps a layer name to the (row copies, column copies) of each of its blocks (layers
    not named: one of each). By default (None) every block has one row copy and the columns its
    tile leaves idle hold further column copies (`_fill_columns`)."""
    Geometry(rows, cols, 1)  # validates the tile size
    placed: dict[str, list[Block]] = {}
    tile, row, col = 0, 0, 0
    for node in graph.mvm_nodes:
        fan_in, fan_out = weight_matrix(node).T.shape
        placed[node.name] = []
        row_copies, col_copies = (copies or {}).get(node.name, (1, 1))
        for in_start, in_stop in _split(fan_in, rows):
            for out_start, out_stop in _split(fan_out, cols):
                block = Block(node.name, tile, row, col, in_start, in_stop, out_start, out_stop,
                              row_copies, col_copies)
                if block.tile_rows > rows or block.tile_cols > cols:
                    raise ConfigError(f"copies of layer {node.name!r} must fit a {rows}x{cols} tile, "
                                      f"not need {block.tile_rows}x{block.tile_cols}")
                if row + block.tile_rows > rows or col + block.tile_cols > cols:
                    tile, row, col = tile + 1, 0, 0
                placed[node.name].append(dataclasses.replace(block, tile=tile, row0=row, col0=col))
                row, col = row + block.tile_rows, col + block.tile_cols
    needed = tile + 1
    if needed > max_tiles:
        blocks = sum(len(b) for b in placed.values())
        weights = sum(int(np.prod(weight_matrix(n).shape)) for n in graph.mvm_nodes)
        raise ConfigError(
            f"the model must fit in {max_tiles} tiles of {rows}x{cols}, not need {needed}: its MVM "
            f"layers hold {weights} weights in {blocks} blocks of at most {rows}x{cols}, and a tile "
            f"holds blocks on disjoint rows and columns only (the chip has {max_tiles * rows * cols} "
            f"cells)")
    if copies is None:
        placed = _fill_columns(placed, cols)
    return Mapping(graph, Geometry(rows, cols, needed), placed)


def _fill_columns(placed: dict[str, list[Block]], cols: int) -> dict[str, list[Block]]:
    """The blocks with column copies in the columns their tile leaves idle.

    The copies of a weight are programmed independently and read by their own ADCs, so the
    average of their outputs has the programming, drift and read noise of the devices and the
    ADC quantisation reduced by sqrt(copies). Rows are programmed and verified row-wise, so
    copies cost no programming time and no tiles. On each tile, idle columns go one copy at a
    time to the block with the fewest copies (the narrowest first) while one more fits."""
    filled: dict[Block, Block] = {}
    for tile in sorted({b.tile for blocks in placed.values() for b in blocks}):
        on_tile = [b for blocks in placed.values() for b in blocks if b.tile == tile]
        counts = [1] * len(on_tile)
        used = sum(b.cols for b in on_tile)
        while True:
            order = sorted(range(len(on_tile)), key=lambda i: (counts[i], on_tile[i].cols))
            grow = next((i for i in order if used + on_tile[i].cols <= cols), None)
            if grow is None:
                break
            counts[grow] += 1
            used += on_tile[grow].cols
        col0 = 0
        for block, count in zip(on_tile, counts, strict=True):
            filled[block] = dataclasses.replace(block, col0=col0, col_copies=count)
            col0 += block.cols * count
    return {name: [filled[b] for b in blocks] for name, blocks in placed.items()}


def block_codes(node: Node, block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G+ codes, G- codes) [block rows, block cols] and the per-column weight scale w_max
    (weight = code / CODE_MAX * w_max) of one block."""
    m = weight_matrix(node).T[block.in_start:block.in_stop, block.out_start:block.out_stop]
    w_max = np.abs(m).max(axis=0)
    scale = np.where(w_max > 0, CODE_MAX / np.where(w_max > 0, w_max, 1.0), 0.0)
    plus = np.rint(np.maximum(m, 0) * scale).astype(np.int64)
    minus = np.rint(np.maximum(-m, 0) * scale).astype(np.int64)
    return plus, minus, w_max


def tile_codes(mapping: Mapping, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Target codes [rows, cols] of every device of `tile` (0 where no block lives)."""
    g = mapping.geometry
    plus = np.zeros((g.rows, g.cols), dtype=np.int64)
    minus = np.zeros_like(plus)
    for block in mapping.blocks_of_tile(tile):
        p, m, _ = block_codes(mapping.graph.node(block.node), block)
        rows = slice(block.row0, block.row0 + block.tile_rows)
        cols = slice(block.col0, block.col0 + block.tile_cols)
        plus[rows, cols] = np.tile(p, (block.row_copies, block.col_copies))
        minus[rows, cols] = np.tile(m, (block.row_copies, block.col_copies))
    return plus, minus
