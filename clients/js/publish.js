// wsbus-client/publish: publish an event from a Node service with the Redis
// client it already has (node-redis or ioredis), the way the README's
// "Publishing from a service" says: XADD <prefix>:{p}:in * topic T data D, p = crc32(T) % N.

let table;

/** crc32 is CRC-32/IEEE of the string's UTF-8 bytes (zlib.crc32, Go's hash/crc32). */
export function crc32(s) {
  if (!table) {
    table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[i] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (const b of new TextEncoder().encode(s)) crc = table[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** partition is the partition of topic among n: crc32(topic) % n. */
export function partition(topic, n) {
  return crc32(topic) % n;
}

const counts = new WeakMap(); // redis client -> prefix -> partitions (fixed once the bus is migrated)

/**
 * publish appends one event to the topic's partition and returns its ID.
 * redis is a node-redis (xAdd, hGet) or ioredis (xadd, hget) client; data
 * is JSON-encoded. options.partitions saves the HGET of <prefix>:meta.
 */
export async function publish(redis, topic, data, { prefix = "wsbus", partitions } = {}) {
  let n = partitions ?? counts.get(redis)?.get(prefix);
  if (n === undefined) {
    n = Number(await (redis.hGet ? redis.hGet(`${prefix}:meta`, "partitions") : redis.hget(`${prefix}:meta`, "partitions")));
    if (!(n > 0)) throw new Error(`wsbus publish: ${prefix}:meta has no partitions: is the bus migrated (wsbus migrate)?`);
    if (!counts.has(redis)) counts.set(redis, new Map());
    counts.get(redis).set(prefix, n);
  }
  const key = `${prefix}:{${partition(topic, n)}}:in`;
  const payload = JSON.stringify(data);
  return redis.xAdd ? redis.xAdd(key, "*", { topic, data: payload }) : redis.xadd(key, "*", "topic", topic, "data", payload);
}
