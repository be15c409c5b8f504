-- Customers whose postal address cannot be real: empty, shaped like an SSN
-- (###-##-####, with or without dashes), or all digits — with the rule that fired,
-- from the app and the CRM alike (`source`).
-- The rule was computed in d2a.customer_profiles from the encrypted address.
SELECT customer_id, source, email_hash, address_rule AS rule, loaded_at
FROM d2a.customer_profiles
WHERE address_rule IS NOT NULL
