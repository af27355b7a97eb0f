/** Partition tables: what img reads equals what sfdisk wrote (sfdisk -J is the oracle); hostile tables refused. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as zlib from 'node:zlib';
import { open } from '../../src/index';
import { readPartitions } from '../../src/guestfs/partitions';
import { qemuImg, run, tempDir } from '../helpers';

const MiB = 1 << 20;

function sfdisk(file: string, script: string): void {
  const r = run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', file], script);
  assert.equal(r.status, 0, r.stderr);
}

/** sfdisk's own view: partitions with start/size in bytes, the extended container left out. */
function sfdiskView(file: string): { scheme: string; parts: { number: number; start: number; size: number; type: string; name?: string }[] } {
  const json = JSON.parse(run('sfdisk', ['-J', file]).stdout).partitiontable;
  const parts = (json.partitions as { node: string; start: number; size: number; type: string; name?: string }[])
    .filter((p) => !['5', 'f', '85'].includes(p.type))
    .map((p) => ({
      number: Number(/(\d+)$/.exec(p.node)![1]),
      start: p.start * 512,
      size: p.size * 512,
      type: json.label === 'dos' ? `0x${p.type.padStart(2, '0')}` : p.type.toLowerCase(),
      ...(p.name !== undefined ? { name: p.name } : {}),
    }));
  return { scheme: json.label === 'dos' ? 'mbr' : json.label, parts };
}

async function imgView(file: string): Promise<{ scheme: string; parts: unknown[] }> {
  const dev = await open(file);
  try {
    const t = await readPartitions(dev);
    return { scheme: t.scheme, parts: t.partitions.map(({ bootable: _b, ...p }) => p) };
  } finally {
    await dev.close();
  }
}

test('MBR with primaries, an empty slot and a chain of logical partitions, read through qcow2', async () => {
  const dir = tempDir();
  const raw = path.join(dir, 'mbr.raw');
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, 64 * MiB);
  sfdisk(raw, 'label: dos\n1: start=2048, size=8M, type=83, bootable\n3: size=8M, type=c\n4: size=40M, type=5\n5: size=4M, type=83\n6: size=10M, type=82\n7: type=83\n');
  const qcow = path.join(dir, 'mbr.qcow2');
  qemuImg('convert', '-O', 'qcow2', raw, qcow);
  const expected = sfdiskView(raw);
  assert.equal(expected.parts.length, 5);
  assert.deepEqual(await imgView(qcow), expected);
  const dev = await open(qcow);
  assert.equal((await readPartitions(dev)).partitions[0].bootable, true);
  await dev.close();
});

test('GPT with names, and the backup header when the primary is damaged', async () => {
  const dir = tempDir();
  const raw = path.join(dir, 'gpt.raw');
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, 64 * MiB);
  sfdisk(raw, 'label: gpt\n1: size=8M, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"\n2: size=20M, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n3: type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n');
  const expected = sfdiskView(raw);
  assert.equal(expected.parts.length, 3);
  assert.deepEqual(await imgView(raw), expected);
  // Break the primary header's CRC: the backup at the last LBA answers.
  const fd = fs.openSync(raw, 'r+');
  fs.writeSync(fd, Buffer.from('X'), 0, 1, 512 + 40);
  fs.closeSync(fd);
  assert.deepEqual(await imgView(raw), expected);
  // Break the backup too: a clear error.
  const fd2 = fs.openSync(raw, 'r+');
  fs.writeSync(fd2, Buffer.from('Y'), 0, 1, 64 * MiB - 512 + 8);
  fs.closeSync(fd2);
  await assert.rejects(imgView(raw), /GPT header at LBA 1: header CRC32 mismatch/);
});

test('no table, a filesystem boot sector, tiny disks: scheme none', async () => {
  const dir = tempDir();
  const fat = path.join(dir, 'fat.raw');
  fs.writeFileSync(fat, '');
  fs.truncateSync(fat, 16 * MiB);
  assert.equal(run('mkfs.vfat', [fat]).status, 0);
  assert.deepEqual(await imgView(fat), { scheme: 'none', parts: [] });
  const empty = path.join(dir, 'empty.raw');
  fs.writeFileSync(empty, Buffer.alloc(MiB));
  assert.deepEqual(await imgView(empty), { scheme: 'none', parts: [] });
  const tiny = path.join(dir, 'tiny.raw');
  fs.writeFileSync(tiny, Buffer.alloc(512));
  assert.deepEqual(await imgView(tiny), { scheme: 'none', parts: [] });
});

/** Writes a 16-byte MBR/EBR entry at `o` of `b`. */
function entry(b: Buffer, o: number, type: number, lba: number, sectors: number): void {
  b.writeUInt8(type, o + 4);
  b.writeUInt32LE(lba, o + 8);
  b.writeUInt32LE(sectors, o + 12);
}

function hostileMbr(dir: string, name: string, build: (disk: Buffer) => void): string {
  const disk = Buffer.alloc(8 * MiB);
  disk.writeUInt16LE(0xaa55, 510);
  build(disk);
  const file = path.join(dir, name);
  fs.writeFileSync(file, disk);
  return file;
}

test('hostile MBRs: looping EBR chains, partitions past the end, endless chains', async () => {
  const dir = tempDir();
  const ext = (d: Buffer): void => entry(d, 446, 0x05, 2048, 8192);
  const ebr = (d: Buffer, lba: number, partLba: number, nextRel: number): void => {
    d.writeUInt16LE(0xaa55, lba * 512 + 510);
    entry(d, lba * 512 + 446, 0x83, partLba, 8);
    if (nextRel) entry(d, lba * 512 + 462, 0x05, nextRel, 16);
  };
  const loop = hostileMbr(dir, 'loop', (d) => (ext(d), ebr(d, 2048, 1, 100), ebr(d, 2148, 1, 0 + 1), ebr(d, 2049, 1, 100)));
  await assert.rejects(imgView(loop), /EBR chain loops/);
  const past = hostileMbr(dir, 'past', (d) => entry(d, 446, 0x83, 2048, 1 << 30));
  await assert.rejects(imgView(past), /partition 1 .* lies outside the disk/);
  const outside = hostileMbr(dir, 'outside', (d) => (ext(d), ebr(d, 2048, 1, 9000)));
  await assert.rejects(imgView(outside), /EBR at sector 11048 lies outside the extended partition/);
  const nosig = hostileMbr(dir, 'nosig', (d) => (ext(d), entry(d, 2048 * 512 + 446, 0x83, 1, 8)));
  await assert.rejects(imgView(nosig), /no 0x55aa signature/);
  // 300 logical partitions in a well-formed chain: refused past Linux's limit, not looped over forever.
  const endless = hostileMbr(dir, 'endless', (d) => {
    entry(d, 446, 0x05, 2048, 12000);
    for (let i = 0; i < 300; i++) ebr(d, 2048 + i * 2, 1, (i + 1) * 2);
  });
  await assert.rejects(imgView(endless), /more than 256 logical partitions/);
});

test('hostile GPT headers: huge entry counts, odd entry sizes, entries outside the disk', async () => {
  const dir = tempDir();
  const make = (name: string, edit: (h: Buffer) => void): string => {
    const disk = Buffer.alloc(4 * MiB);
    disk.writeUInt16LE(0xaa55, 510);
    entry(disk, 446, 0xee, 1, 8191);
    const h = disk.subarray(512, 1024);
    h.write('EFI PART', 0, 'latin1');
    h.writeUInt32LE(0x10000, 8);
    h.writeUInt32LE(92, 12);
    h.writeBigUInt64LE(1n, 24);
    h.writeBigUInt64LE(8191n, 32);
    h.writeBigUInt64LE(34n, 40);
    h.writeBigUInt64LE(8158n, 48);
    h.writeBigUInt64LE(2n, 72);
    h.writeUInt32LE(128, 80);
    h.writeUInt32LE(128, 84);
    h.writeUInt32LE(zlib.crc32(disk.subarray(1024, 1024 + 128 * 128)), 88);
    edit(h);
    h.writeUInt32LE(0, 16);
    h.writeUInt32LE(zlib.crc32(h.subarray(0, 92)), 16);
    const file = path.join(dir, name);
    fs.writeFileSync(file, disk);
    return file;
  };
  assert.deepEqual(await imgView(make('ok', () => {})), { scheme: 'gpt', parts: [] });
  await assert.rejects(imgView(make('count', (h) => h.writeUInt32LE(0xffffffff, 80))), /4294967295 partition entries/);
  await assert.rejects(imgView(make('size', (h) => h.writeUInt32LE(100, 84))), /partition entry size 100/);
  await assert.rejects(imgView(make('where', (h) => h.writeBigUInt64LE(1n << 40n, 72))), /entries at LBA .* outside the disk/);
  await assert.rejects(imgView(make('hdr', (h) => h.writeUInt32LE(4096, 12))), /header size 4096/);
  await assert.rejects(imgView(make('crc', (h) => h.writeUInt32LE(1, 88))), /entry array CRC32 mismatch/);
});
