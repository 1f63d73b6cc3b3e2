"""Every error a tile raises (numerics.md 6 and 8), provoked through its ports: the order of the
CMD checks, BUSY, PACKET_LENGTH keeping the staged state, ABORT and ABORTED, with ERROR_INFO,
ERROR_COUNT, the status flags and irq. (PACKET_TYPE and PACKET_TILE are the router's.)"""

from __future__ import annotations

import numpy as np
from rtl_tile_bench import FakeAnalog, TileBench, TileReference, run_tile

from pcmhil.host import packets as pk
from pcmhil.interface import (
    CALIBRATE_MAX_LOG2,
    PWM_MAX_CYCLES,
    Command,
    ErrorCode,
    Geometry,
    PacketType,
    ProgramMode,
)
from pcmhil.rtl.tile import Tile

GEOMETRY = Geometry(8, 8)
ROWS = GEOMETRY.rows
IRQ_ERROR = 1 << 3
IRQ_DONE = 1 << 2
MVM, PROGRAM_ROW, VERIFY_ROW = Command.MVM.value, Command.PROGRAM_ROW.value, Command.VERIFY_ROW.value
LOAD_LDPU, CALIBRATE, ABORT = Command.LOAD_LDPU.value, Command.CALIBRATE.value, Command.ABORT.value


def _run(script, seed=0):
    tile = Tile(GEOMETRY, 0)
    fake = FakeAnalog(GEOMETRY, seed=seed)
    bench = TileBench(tile)
    run_tile(tile, fake, bench, lambda ctx: script(ctx, bench, tile), transaction=True)
    return bench, TileReference(fake)


async def _outcome(ctx, bench):
    """(status, ERROR_INFO, ERROR_COUNT) once the tile is idle."""
    status = await bench.wait_idle(ctx)
    return status, await bench.error_info(ctx), await bench.read(ctx, "ERROR_COUNT")


#: (opcode, arg, error) of CMD writes to an idle tile with WINDOW = PWM_MAX_CYCLES and nothing
#: staged, then with WINDOW = PWM_MAX_CYCLES - 1: checks 2 to 5 of numerics 6 in their order.
IDLE_CHECKS = [
    (0x00, 0, ErrorCode.UNKNOWN_COMMAND),
    (0x7F, 0x12, ErrorCode.UNKNOWN_COMMAND),
    (MVM, 0, ErrorCode.BAD_ARGUMENT),
    (PROGRAM_ROW, ROWS, ErrorCode.BAD_ARGUMENT),
    (PROGRAM_ROW, 1 << 17, ErrorCode.BAD_ARGUMENT),
    (VERIFY_ROW, ROWS, ErrorCode.BAD_ARGUMENT),
    (VERIFY_ROW, 1 << 16, ErrorCode.BAD_ARGUMENT),
    (LOAD_LDPU, 1, ErrorCode.BAD_ARGUMENT),
    (CALIBRATE, CALIBRATE_MAX_LOG2 + 1, ErrorCode.BAD_ARGUMENT),
    (ABORT, 1, ErrorCode.BAD_ARGUMENT),
    (PROGRAM_ROW, ROWS - 1 | ProgramMode.PULSE.value << 16, ErrorCode.NO_DATA),
    (LOAD_LDPU, 0, ErrorCode.NO_DATA),
]
SHORT_WINDOW_CHECKS = [
    (MVM, 1, ErrorCode.BAD_CONFIG),
    (VERIFY_ROW, 0, ErrorCode.BAD_CONFIG),
    (CALIBRATE, 0, ErrorCode.BAD_CONFIG),
    (MVM, 0, ErrorCode.BAD_ARGUMENT),  # check 3 before check 4
    (CALIBRATE, CALIBRATE_MAX_LOG2 + 1, ErrorCode.BAD_ARGUMENT),
    (PROGRAM_ROW, 0, ErrorCode.NO_DATA),  # no window check for PROGRAM_ROW
]


def test_command_checks_in_order():
    seen = []

    async def script(ctx, bench, tile):
        await bench.write(ctx, "CONFIG", IRQ_ERROR)
        for checks, window in ((IDLE_CHECKS, PWM_MAX_CYCLES), (SHORT_WINDOW_CHECKS, PWM_MAX_CYCLES - 1)):
            await bench.write(ctx, "WINDOW", window)
            for opcode, arg, _ in checks:
                await bench.command(ctx, opcode, arg)
                seen.append((*await _outcome(ctx, bench), ctx.get(tile.irq)))
        await bench.write(ctx, "STATUS", 0b100)  # w1c
        seen.append((await bench.status(ctx), ctx.get(tile.irq)))
        await bench.command(ctx, ABORT)  # idle: nothing happens
        seen.append(await _outcome(ctx, bench))

    _run(script)
    checks = IDLE_CHECKS + SHORT_WINDOW_CHECKS
    for n, ((status, info, count, irq), (opcode, _, code)) in enumerate(zip(seen, checks, strict=False)):
        assert info == (code.value, opcode), (n, opcode, code)
        assert count == n + 1
        assert status["error"] and not status["done"] and not status["busy"] and irq
        assert status["opcode"] == 0  # a rejected command does not become the last command
    (cleared, irq), (status, info, count) = seen[len(checks):]
    assert not cleared["error"] and not irq
    assert count == len(checks) and not status["error"] and not status["done"]
    assert status["opcode"] == ABORT


def test_busy_while_an_mvm_waits_for_vectors():
    x = np.arange(2 * ROWS).reshape(2, ROWS) - ROWS
    seen = {}

    async def script(ctx, bench, tile):
        await bench.write(ctx, "CONFIG", IRQ_DONE)
        await bench.command(ctx, MVM, 2)
        for opcode, arg in ((VERIFY_ROW, 0), (0x55, 0), (MVM, 0), (ABORT, 1)):
            await bench.command(ctx, opcode, arg)
            await ctx.tick().repeat(2)
            seen.setdefault("errors", []).append(await bench.error_info(ctx))
        seen["waiting"] = (await bench.status(ctx), ctx.get(tile.irq))
        for v in x:
            await bench.send(ctx, bench.activations(v)[0])
        seen["end"] = (*await _outcome(ctx, bench), ctx.get(tile.irq))
        await bench.wait_packets(ctx, 2)

    bench, ref = _run(script)
    busy, bad = ErrorCode.BUSY.value, ErrorCode.BAD_ARGUMENT.value
    # ABORT with a reserved bit set fails check 3 even while busy, and does not abort
    assert seen["errors"] == [(busy, VERIFY_ROW), (busy, 0x55), (busy, MVM), (bad, ABORT)]
    waiting, irq = seen["waiting"]
    assert waiting["busy"] and waiting["error"] and not waiting["done"] and not irq
    status, info, count, irq = seen["end"]
    assert status["done"] and status["opcode"] == MVM and count == 4 and irq
    assert [list(p) for p in bench.packets] == [list(ref.result_packet(v, 0)) for v in x]


def test_packet_length_keeps_the_staged_state():
    rng = np.random.default_rng(9)
    cols = GEOMETRY.cols
    gain, bias = rng.integers(-3, 4, cols), rng.integers(-20, 20, cols)
    ldpu = pk.pack_ldpu_params(gain, bias, GEOMETRY)[0]
    other = pk.pack_ldpu_params(-gain, bias + 7, GEOMETRY)[0]
    program = pk.pack_program_data(rng.integers(0, 256, cols), rng.integers(0, 256, cols), GEOMETRY)[0]
    junk = pk.pack_program_data(np.zeros(cols), np.zeros(cols), GEOMETRY)[0]
    x = rng.integers(-50, 50, ROWS)
    act = pk.pack_activations(x, GEOMETRY)[0]
    bad_packets = [
        other[:3],  # tlast early
        np.concatenate([other, other[1:4]]),  # tlast three beats late
        junk[:1],  # a header alone
        np.concatenate([junk, [0]]),  # tlast one beat late
        act[:-1],  # a short activation vector
    ]
    seen = {"infos": []}

    async def script(ctx, bench, tile):
        await bench.send(ctx, ldpu)
        await bench.send(ctx, program)
        for packet in bad_packets:
            await bench.send(ctx, packet)
            await ctx.tick().repeat(2)
            seen["infos"].append((await bench.error_info(ctx), await bench.read(ctx, "ERROR_COUNT")))
        seen["staged"] = await bench.status(ctx)
        await bench.command(ctx, LOAD_LDPU)
        await bench.wait_idle(ctx)
        await bench.command(ctx, PROGRAM_ROW, 2)
        await bench.wait_idle(ctx)
        await bench.command(ctx, MVM, 1)
        await bench.send(ctx, act)
        seen["end"] = await _outcome(ctx, bench)
        await bench.wait_packets(ctx, 1)

    bench, ref = _run(script)
    fake = ref.analog
    length = ErrorCode.PACKET_LENGTH.value
    assert seen["infos"] == [((length, 0), n + 1) for n in range(len(bad_packets))]
    staged = seen["staged"]
    assert staged["prog_staged"] and staged["ldpu_staged"] and not staged["act_ready"]
    status, info, count = seen["end"]
    assert status["done"] and count == len(bad_packets)
    # the staged program words and LDPU parameters are those of the good packets
    (row, _, words, _, _), = fake.programmed
    payload = program[1:].astype(np.uint64)
    assert row == 2 and words == [int(payload[2 * k] | payload[2 * k + 1] << np.uint64(32))
                                  for k in range(len(payload) // 2)]
    ref.gain, ref.bias = gain, bias
    assert list(bench.packets[0]) == list(ref.result_packet(x, 0))


def test_abort_finishes_accepted_vectors_then_aborts():
    rng = np.random.default_rng(10)
    x = rng.integers(-128, 128, size=(4, ROWS))
    seen = {}

    async def script(ctx, bench, tile):
        # an MVM waiting for its first vector ends at once
        await bench.command(ctx, MVM, 5)
        await ctx.tick().repeat(5)
        await bench.command(ctx, ABORT)
        seen["empty"] = await _outcome(ctx, bench)
        # vector 0 in the windows, vector 1 buffered: both finish, then ABORTED
        await bench.command(ctx, MVM, 5)
        await bench.send(ctx, bench.activations(x[0])[0])
        await bench.send(ctx, bench.activations(x[1])[0])
        await bench.command(ctx, ABORT)
        seen["busy_after_abort"] = await bench.status(ctx)
        await bench.send(ctx, bench.activations(x[2])[0])  # arrives after the ABORT: stays buffered
        seen["two"] = await _outcome(ctx, bench)
        seen["left"] = await bench.status(ctx)
        seen["count"] = await bench.read(ctx, "MVM_COUNT")
        await bench.write(ctx, "STATUS", 0b110)
        await bench.command(ctx, MVM, 1)  # takes the buffered vector
        seen["next"] = await _outcome(ctx, bench)
        # a VERIFY_ROW that is aborted still sends its packet
        await bench.write(ctx, "STATUS", 0b110)
        await bench.command(ctx, VERIFY_ROW, 3)
        await ctx.tick().repeat(20)
        await bench.command(ctx, ABORT)
        seen["verify"] = await _outcome(ctx, bench)
        await bench.wait_packets(ctx, 4)

    bench, ref = _run(script)
    aborted = ErrorCode.ABORTED.value
    status, info, count = seen["empty"]
    assert info == (aborted, MVM) and count == 1 and status["error"] and not status["done"]
    assert seen["busy_after_abort"]["busy"]
    status, info, count = seen["two"]
    assert info == (aborted, MVM) and count == 2 and not status["done"]
    assert seen["left"]["act_ready"] and seen["count"] == 2
    status, info, count = seen["next"]
    assert status["done"] and not status["error"] and count == 2
    status, info, count = seen["verify"]
    assert info == (aborted, VERIFY_ROW) and count == 3 and not status["done"]
    expected = [ref.result_packet(v, 0) for v in x[:3]]
    expected.append(pk.pack_verify(*ref.verify(3, 128), 0, 3)[0])
    assert [list(p) for p in bench.packets] == [list(p) for p in expected]
    assert pk.header_fields(int(bench.packets[-1][0]))["type"] == PacketType.VERIFY_DATA.value


def test_abort_racing_the_end_of_a_command():
    """An ABORT written in any cycle around the end of a VERIFY_ROW either aborts it or finds
    the tile idle; it never leaks into the next command."""
    seen = []

    async def script(ctx, bench, tile):
        await bench.command(ctx, VERIFY_ROW, 2)
        duration = 1  # cycles from the CMD write until STATUS reads idle, one read per cycle
        while (await bench.status(ctx))["busy"]:
            duration += 1
        for delay in range(duration - 8, duration + 4):
            count = await bench.read(ctx, "ERROR_COUNT")
            await bench.write(ctx, "STATUS", 0b110)
            await bench.command(ctx, VERIFY_ROW, 2)
            await ctx.tick().repeat(delay)
            await bench.command(ctx, ABORT)
            verify, info, _ = await _outcome(ctx, bench)
            await bench.write(ctx, "STATUS", 0b110)
            await bench.command(ctx, CALIBRATE, 0)
            calibrate, _, after = await _outcome(ctx, bench)
            seen.append((verify["done"], info, after - count, calibrate["done"]))

    _run(script)
    # (VERIFY_ROW done, ERROR_INFO if it was aborted, errors raised, CALIBRATE done)
    outcomes = {(done, None if done else info, errors, calibrate_done)
                for done, info, errors, calibrate_done in seen}
    assert outcomes == {(0, (ErrorCode.ABORTED.value, VERIFY_ROW), 1, 1), (1, None, 0, 1)}, seen
