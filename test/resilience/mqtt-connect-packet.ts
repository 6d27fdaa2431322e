/**
 * An MQTT 3.1.1 CONNECT as raw bytes (clean session, username and password, keep-alive 60 s), for the tests and the
 * flood process that speak MQTT below any client library: a client that stops after CONNECT, or sends thousands.
 */
export function mqttConnectPacket(clientId: string, username: string, password: string): Buffer {
  const body = Buffer.concat([utf8('MQTT'), Buffer.from([4, 0xc2, 0, 60]), utf8(clientId), utf8(username), utf8(password)]);
  // The remaining length: 7 bits a byte, low first, the high bit set while more follow.
  const length: number[] = [];
  let remaining = body.length;
  do {
    let byte = remaining % 128;
    remaining = Math.floor(remaining / 128);
    if (remaining > 0) byte |= 0x80;
    length.push(byte);
  } while (remaining > 0);
  return Buffer.concat([Buffer.from([0x10, ...length]), body]);
}

/** An MQTT UTF-8 string: two bytes of length, then the bytes. */
function utf8(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([Buffer.from([bytes.length >> 8, bytes.length & 0xff]), bytes]);
}
