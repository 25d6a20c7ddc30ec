//! The BER subset SNMP needs: definite lengths, INTEGER, OCTET STRING, OID, SEQUENCE,
//! and a reader over TLVs.

pub const INT: u8 = 0x02;
pub const OCTETS: u8 = 0x04;
pub const SEQ: u8 = 0x30;
pub const GET: u8 = 0xa0;
pub const RESPONSE: u8 = 0xa2;
pub const REPORT: u8 = 0xa8;

pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

pub fn int(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    tlv(INT, &bytes[start..])
}

pub fn octets(b: &[u8]) -> Vec<u8> {
    tlv(OCTETS, b)
}

pub fn oid(arcs: &[u32]) -> Vec<u8> {
    tlv(0x06, &oid_content(arcs))
}

pub fn oid_content(arcs: &[u32]) -> Vec<u8> {
    let mut out = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &a in &arcs[2..] {
        let mut groups = vec![(a & 0x7f) as u8];
        let mut v = a >> 7;
        while v > 0 {
            groups.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        out.extend(groups.into_iter().rev());
    }
    out
}

pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQ, &parts.concat())
}

/// Reads TLVs one after another out of a buffer.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let b = self.0;
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, head) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let content = b.get(head..head.checked_add(len)?)?;
        self.0 = &b[head + len..];
        Some((tag, content))
    }

    pub fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, c) if t == tag => Some(c),
            _ => None,
        }
    }

    pub fn int(&mut self) -> Option<i64> {
        let c = self.expect(INT)?;
        if c.is_empty() || c.len() > 8 {
            return None;
        }
        let mut v: i64 = if c[0] & 0x80 != 0 { -1 } else { 0 };
        for &b in c {
            v = (v << 8) | b as i64;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_oids_encode_as_ber() {
        assert_eq!(int(0), [2, 1, 0]);
        assert_eq!(int(128), [2, 2, 0, 128]);
        assert_eq!(int(-1), [2, 1, 0xff]);
        assert_eq!(
            oid(&[1, 3, 6, 1, 4, 1, 8072]),
            [6, 7, 0x2b, 6, 1, 4, 1, 0xbf, 0x08]
        );
        assert_eq!(Reader(&int(65_507)).int(), Some(65_507));
    }
}
