"""Compiler/mapper: a layer graph onto the chip's tiles.

Every MVM layer (Linear, Conv via im2col: one MVM per output position) is a matrix M[in, out]
with the inputs on crossbar rows and the outputs on columns. A layer larger than a tile is cut
into row blocks (its partial sums are accumulated digitally on the host, in float, from each
block's dequantised int8 outputs: see host/inference.py) and column blocks. Blocks are placed on
tiles diagonally: each block takes rows and columns no other block of its tile uses, so small
layers share a tile and a block's MVM (only its rows driven) never sees another block's
devices. Weights are scaled per column of a block to the full conductance range.
"""

from __future__ import annotations

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

    @property
    def rows(self) -> int:
        return self.in_stop - self.in_start

    @property
    def cols(self) -> int:
        return self.out_stop - self.out_start

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
        cells = sum(b.rows * b.cols for blocks in self.blocks.values() for b in blocks)
        mvms = sum(self.positions(self.graph.node(name)) * len(blocks)
                   for name, blocks in self.blocks.items())
        return {
            "tile_rows": g.rows, "tile_cols": g.cols, "tiles_used": g.tiles,
            "utilisation": round(cells / (g.tiles * g.rows * g.cols), 4),
            "mvms_per_inference": mvms,
            "layers": {name: {"blocks": len(blocks),
                              "row_blocks": len({b.in_start for b in blocks}),
                              "col_blocks": len({b.out_start for b in blocks}),
                              "tiles": sorted({b.tile for b in blocks})}
                       for name, blocks in self.blocks.items()},
        }


def _split(size: int, limit: int) -> list[tuple[int, int]]:
    """[start, stop) pieces of near-equal size, each <= limit."""
    pieces = -(-size // limit)
    edges = np.linspace(0, size, pieces + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def map_graph(graph: Graph, rows: int = 256, cols: int = 256, max_tiles: int = TILES_MAX) -> Mapping:
    """Place every MVM layer of `graph` on tiles of rows x cols; ConfigError if it needs more
    than `max_tiles` tiles (the message gives the numbers)."""
    Geometry(rows, cols, 1)  # validates the tile size
    placed: dict[str, list[Block]] = {}
    tile, row, col = 0, 0, 0
    for node in graph.mvm_nodes:
        fan_in, fan_out = weight_matrix(node).T.shape
        placed[node.name] = []
        for in_start, in_stop in _split(fan_in, rows):
            for out_start, out_stop in _split(fan_out, cols):
                h, w = in_stop - in_start, out_stop - out_start
                if row + h > rows or col + w > cols:
                    tile, row, col = tile + 1, 0, 0
                placed[node.name].append(Block(node.name, tile, row, col, in_start, in_stop,
                                               out_start, out_stop))
                row, col = row + h, col + w
    needed = tile + 1
    if needed > max_tiles:
        raise ConfigError(
            f"the model must fit in {max_tiles} tiles of {rows}x{cols}, not need {needed}: its MVM "
            f"layers hold {sum(int(np.prod(weight_matrix(n).shape)) for n in graph.mvm_nodes)} weights "
            f"and the chip has {max_tiles * rows * cols} cells")
    return Mapping(graph, Geometry(rows, cols, needed), placed)


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
        plus[block.row0:block.row0 + block.rows, block.col0:block.col0 + block.cols] = p
        minus[block.row0:block.row0 + block.rows, block.col0:block.col0 + block.cols] = m
    return plus, minus
