-- CleverTap profiles without clear-text personal data.
-- The pipeline's `pii:` policy has already transformed the D1 columns this model reads:
-- email → HMAC hash, phone → masked to the last 4 digits, address → AES-GCM encrypted.
-- The address rule is classified here, inside the engine, from decrypt(address): the clear
-- address never leaves this query; D2 keeps only the encrypted value and the rule.
SELECT
  p.profile_id                     AS customer_id,
  hmac_sha256(p.identity)          AS identity_hash,
  p.email                          AS email_hash,
  p.phone                          AS phone_masked,
  p.address                        AS address_encrypted,
  CASE
    WHEN p.address IS NOT NULL AND decrypt(p.address) IS NULL                  THEN 'unreadable'
    WHEN p.address IS NULL OR trim(decrypt(p.address)) = ''                    THEN 'empty'
    WHEN regexp_like(trim(decrypt(p.address)), '^[0-9]{3}-?[0-9]{2}-?[0-9]{4}$') THEN 'ssn_shaped'
    WHEN regexp_like(trim(decrypt(p.address)), '^[0-9]+$')                     THEN 'all_digits'
  END                              AS address_rule,
  p._sluice_loaded_at              AS loaded_at
FROM d1.app_profiles AS p
